//! Pod traces: pods with creation and deletion times, replayed as they happened.
//!
//! The format is the openb trace's (Alibaba cluster-trace-gpu-v2023, `data/traces/`): a CSV with a header and
//! at least the columns `name`, `cpu_milli`, `memory_mib`, `num_gpu`, `creation_time` and `deletion_time`
//! (seconds; an empty deletion time means the pod outlives the trace). Other columns are ignored.

/// One pod of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRow {
    pub name: String,
    pub cpu_milli: i64,
    pub memory_mib: i64,
    /// Whole GPUs (a fractional `gpu_milli` share still needs one device without GPU sharing).
    pub gpus: i64,
    pub created_s: u64,
    pub deleted_s: Option<u64>,
}

/// Parses a trace; errors name the line and the column.
pub fn parse(text: &str) -> Result<Vec<TraceRow>, String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| format!("header: {e}"))?.clone();
    let column = |name: &str| {
        headers.iter().position(|h| h.trim() == name).ok_or_else(|| format!("header: no `{name}` column"))
    };
    let (name, cpu, mem, gpu, created, deleted) = (
        column("name")?,
        column("cpu_milli")?,
        column("memory_mib")?,
        column("num_gpu")?,
        column("creation_time")?,
        column("deletion_time")?,
    );
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| format!("line {line}: {e}"))?;
        let field = |c: usize| record.get(c).unwrap_or_default().trim();
        let number = |c: usize| -> Result<i64, String> {
            let text = field(c);
            text.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("line {line}: {} `{text}` is not a non-negative integer", &headers[c]))
        };
        let deleted_s = match field(deleted) {
            "" => None,
            _ => Some(number(deleted)? as u64),
        };
        let row = TraceRow {
            name: field(name).to_owned(),
            cpu_milli: number(cpu)?,
            memory_mib: number(mem)?,
            gpus: number(gpu)?,
            created_s: number(created)? as u64,
            deleted_s,
        };
        if row.deleted_s.is_some_and(|d| d < row.created_s) {
            return Err(format!("line {line}: deletion_time is before creation_time"));
        }
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_columns_by_name_and_names_bad_cells() {
        let rows = parse("creation_time,name,cpu_milli,memory_mib,num_gpu,deletion_time,x\n5,a,100,64,0,,z\n0,b,2000,1024,2,90,\n")
            .unwrap();
        assert_eq!(
            rows[0],
            TraceRow {
                name: "a".into(),
                cpu_milli: 100,
                memory_mib: 64,
                gpus: 0,
                created_s: 5,
                deleted_s: None
            }
        );
        assert_eq!(rows[1].deleted_s, Some(90));
        assert_eq!(rows[1].gpus, 2);
        let err = parse("name,cpu_milli,memory_mib,num_gpu,creation_time,deletion_time\na,lots,1,0,0,\n")
            .unwrap_err();
        assert_eq!(err, "line 2: cpu_milli `lots` is not a non-negative integer");
        let err = parse("name,cpu_milli\n").unwrap_err();
        assert_eq!(err, "header: no `memory_mib` column");
        let err = parse("name,cpu_milli,memory_mib,num_gpu,creation_time,deletion_time\na,1,1,0,10,5\n")
            .unwrap_err();
        assert!(err.contains("before creation_time"));
    }

    #[test]
    fn the_openb_trace_parses() {
        let rows = parse(include_str!("../../data/traces/openb_pod_list_default.csv")).unwrap();
        assert_eq!(rows.len(), 8152);
        assert!(rows.iter().any(|r| r.gpus > 0) && rows.iter().any(|r| r.gpus == 0));
    }
}
