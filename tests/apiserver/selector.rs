//! Label and field selectors in their query-string syntax (`app=web,tier!=db,env in (a,b),!canary`,
//! `spec.nodeName=node-1,status.phase!=Succeeded`).

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label or field selector (all terms must hold).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    terms: Vec<Term>,
    field: bool,
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn set(values: &str) -> Result<Vec<String>, String> {
    let inner = values.trim().strip_prefix('(').and_then(|v| v.strip_suffix(')'));
    let inner = inner.ok_or_else(|| format!("expected a parenthesised set, got {values:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
}

impl Selector {
    pub fn parse(text: &str, field: bool) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for term in split_terms(text) {
            let parsed = if let Some((k, v)) = term.split_once("!=") {
                Term::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Term::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once(" notin ") {
                Term::NotIn(k.trim().into(), set(v)?)
            } else if let Some((k, v)) = term.split_once(" in ") {
                Term::In(k.trim().into(), set(v)?)
            } else if let Some(k) = term.strip_prefix('!') {
                Term::DoesNotExist(k.trim().into())
            } else if !field {
                Term::Exists(term.into())
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            terms.push(parsed);
        }
        Ok(Selector { terms, field })
    }

    fn value(&self, object: &Value, key: &str) -> Option<String> {
        if self.field {
            let pointer = format!("/{}", key.replace('.', "/"));
            match object.pointer(&pointer) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => Some(String::new()),
                Some(other) => Some(other.to_string()),
            }
        } else {
            object
                .pointer("/metadata/labels")
                .and_then(|l| l.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        }
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|term| match term {
            Term::Equals(k, v) => self.value(object, k).as_deref() == Some(v),
            Term::NotEquals(k, v) => self.value(object, k).as_deref() != Some(v),
            Term::In(k, vs) => self.value(object, k).is_some_and(|x| vs.contains(&x)),
            Term::NotIn(k, vs) => self.value(object, k).is_none_or(|x| !vs.contains(&x)),
            Term::Exists(k) => self.value(object, k).is_some(),
            Term::DoesNotExist(k) => self.value(object, k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_and_field_selectors_match_as_the_api_server_does() {
        let pod = json!({"metadata": {"labels": {"app": "web", "env": "prod"}}, "spec": {"nodeName": "n1"},
            "status": {"phase": "Running"}});
        let labels = |s| Selector::parse(s, false).unwrap().matches(&pod);
        assert!(labels("app=web,env in (prod, dev)"));
        assert!(labels("app,!canary,env notin (dev)"));
        assert!(!labels("app!=web"));
        assert!(!labels("canary"));
        let fields = |s| Selector::parse(s, true).unwrap().matches(&pod);
        assert!(fields("spec.nodeName=n1,status.phase!=Succeeded"));
        assert!(!fields("spec.nodeName=n2"));
        assert!(fields("spec.nodeName!=n2"));
        assert!(Selector::parse("spec.nodeName", true).is_err());
    }
}
