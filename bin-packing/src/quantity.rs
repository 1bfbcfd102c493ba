//! Kubernetes resource quantities ("500m", "1Gi", "1.5", "2e3", "100M"), parsed once at the boundary.
//!
//! A [`Quantity`] keeps the exact value written (digits, a power of ten and a power of two), so no
//! precision is lost before it is turned into the integer unit a resource is counted in: millicores for
//! cpu, whole units (bytes, pods, devices) for everything else. Conversions round up, as the API server
//! does, and fail rather than wrap when the result does not fit an `i64`.
//!
//! The grammar is the one in `k8s.io/apimachinery/pkg/api/resource`:
//! `<sign><digits>[.<digits>][<suffix>]` where the suffix is a binary SI suffix (`Ki` .. `Ei`), a decimal SI
//! suffix (`m`, `k`, `M`, `G`, `T`, `P`, `E`) or a decimal exponent (`e3`, `E-2`).

use std::fmt;
use std::str::FromStr;

/// A parsed quantity: `(-1)^negative × digits × 10^exp10 × 2^exp2`, exactly as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    digits: u128,
    exp10: i32,
    exp2: u32,
}

/// What was wrong with a quantity string. The text written is always part of the message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {value:?}: {problem}")]
pub struct QuantityError {
    /// The text as given.
    pub value: String,
    /// What is wrong with it.
    pub problem: QuantityProblem,
}

/// The ways a quantity can be malformed or unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityProblem {
    #[error("it is empty")]
    Empty,
    #[error("expected a number such as \"500m\", \"1.5\" or \"2Gi\"")]
    NotANumber,
    #[error(
        "unknown suffix (expected one of m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent like e3)"
    )]
    UnknownSuffix,
    #[error("the exponent is malformed or too large")]
    BadExponent,
    #[error("it has more than 38 significant digits")]
    TooManyDigits,
    #[error("the value is too large")]
    TooLarge,
    #[error("it must not be negative")]
    Negative,
}

impl Quantity {
    /// Parses a quantity string.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        parse(text).map_err(|problem| QuantityError { value: text.to_owned(), problem })
    }

    /// The quantity in thousandths of its unit, rounded up (cpu: "1.5" -> 1500, "0.1m" -> 1).
    pub fn to_milli_ceil(&self) -> Result<i64, QuantityProblem> {
        self.scaled_ceil(3)
    }

    /// The quantity in whole units, rounded up ("1Ki" -> 1024, "1.5" -> 2, "100M" -> 100_000_000).
    pub fn to_units_ceil(&self) -> Result<i64, QuantityProblem> {
        self.scaled_ceil(0)
    }

    /// Whether the quantity is below zero.
    pub fn is_negative(&self) -> bool {
        self.negative && self.digits != 0
    }

    /// `value × 10^scale`, rounded towards positive infinity.
    fn scaled_ceil(&self, scale: i32) -> Result<i64, QuantityProblem> {
        let too_large = QuantityProblem::TooLarge;
        if self.digits == 0 {
            return Ok(0);
        }
        let mut numerator = self.digits;
        for _ in 0..self.exp2 {
            numerator = numerator.checked_mul(2).ok_or(too_large)?;
        }
        let exp = self.exp10 + scale;
        let magnitude_ceil;
        let magnitude_floor;
        if exp >= 0 {
            let factor = pow10(exp as u32).ok_or(too_large)?;
            let value = numerator.checked_mul(factor).ok_or(too_large)?;
            magnitude_ceil = value;
            magnitude_floor = value;
        } else {
            match pow10(exp.unsigned_abs()) {
                Some(divisor) => {
                    magnitude_floor = numerator / divisor;
                    magnitude_ceil = magnitude_floor + u128::from(!numerator.is_multiple_of(divisor));
                }
                // The divisor exceeds any representable numerator: the value is in [0, 1).
                None => {
                    magnitude_floor = 0;
                    magnitude_ceil = u128::from(numerator != 0);
                }
            }
        }
        // Rounding up a negative value moves it towards zero.
        if self.negative {
            let m = i64::try_from(magnitude_floor).map_err(|_| too_large)?;
            Ok(-m)
        } else {
            i64::try_from(magnitude_ceil).map_err(|_| too_large)
        }
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.is_negative() { "-" } else { "" };
        write!(f, "{sign}{}", self.digits)?;
        if self.exp10 != 0 {
            write!(f, "e{}", self.exp10)?;
        }
        if self.exp2 != 0 {
            write!(f, "*2^{}", self.exp2)?;
        }
        Ok(())
    }
}

fn pow10(exp: u32) -> Option<u128> {
    10u128.checked_pow(exp)
}

fn parse(text: &str) -> Result<Quantity, QuantityProblem> {
    let s = text.trim();
    if s.is_empty() {
        return Err(QuantityProblem::Empty);
    }
    let (negative, rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    // The number is the longest prefix of digits with at most one '.'.
    let number_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
    let (number, suffix) = rest.split_at(number_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(QuantityProblem::NotANumber);
    }
    let mut digits: u128 = 0;
    let mut significant = 0usize;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        let d = u128::from(b - b'0');
        if digits == 0 && d == 0 {
            continue; // leading zeros carry no precision
        }
        significant += 1;
        if significant > 38 {
            return Err(QuantityProblem::TooManyDigits);
        }
        digits = digits * 10 + d;
    }
    let mut exp10 = -(i32::try_from(frac_part.len()).map_err(|_| QuantityProblem::TooManyDigits)?);
    let mut exp2 = 0u32;
    match suffix {
        "" => {}
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        _ if suffix.starts_with(['e', 'E']) => {
            let exp = &suffix[1..];
            let well_formed = {
                let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit())
            };
            if !well_formed {
                return Err(QuantityProblem::BadExponent);
            }
            let e: i32 = exp.parse().map_err(|_| QuantityProblem::BadExponent)?;
            if e.abs() > 1000 {
                return Err(QuantityProblem::BadExponent);
            }
            exp10 += e;
        }
        _ => {
            return Err(if suffix.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) {
                QuantityProblem::UnknownSuffix
            } else {
                QuantityProblem::NotANumber
            });
        }
    }
    Ok(Quantity { negative, digits, exp10, exp2 })
}

/// Parses a cpu quantity into millicores, rounding up; negative values are refused.
pub fn parse_cpu_millis(text: &str) -> Result<i64, QuantityError> {
    parse_non_negative(text, Quantity::to_milli_ceil)
}

/// Parses a quantity counted in whole units (bytes, pods, devices), rounding up; negative values are refused.
pub fn parse_units(text: &str) -> Result<i64, QuantityError> {
    parse_non_negative(text, Quantity::to_units_ceil)
}

fn parse_non_negative(
    text: &str,
    convert: fn(&Quantity) -> Result<i64, QuantityProblem>,
) -> Result<i64, QuantityError> {
    let q = Quantity::parse(text)?;
    let err = |problem| QuantityError { value: text.to_owned(), problem };
    if q.is_negative() {
        return Err(err(QuantityProblem::Negative));
    }
    convert(&q).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn milli(s: &str) -> i64 {
        Quantity::parse(s).unwrap().to_milli_ceil().unwrap()
    }
    fn units(s: &str) -> i64 {
        Quantity::parse(s).unwrap().to_units_ceil().unwrap()
    }
    fn problem(s: &str) -> QuantityProblem {
        Quantity::parse(s).unwrap_err().problem
    }

    #[test]
    fn cpu_forms() {
        assert_eq!(milli("500m"), 500);
        assert_eq!(milli("1"), 1000);
        assert_eq!(milli("1.5"), 1500);
        assert_eq!(milli(".5"), 500);
        assert_eq!(milli("2."), 2000);
        assert_eq!(milli("0.1m"), 1, "sub-millicore rounds up");
        assert_eq!(milli("2e3"), 2_000_000);
        assert_eq!(milli("2E-3"), 2);
        assert_eq!(milli("+250m"), 250);
        assert_eq!(milli("0"), 0);
        assert_eq!(milli("0.0001"), 1);
    }

    #[test]
    fn memory_forms() {
        assert_eq!(units("1Gi"), 1 << 30);
        assert_eq!(units("1.5Gi"), 3 << 29);
        assert_eq!(units("100M"), 100_000_000);
        assert_eq!(units("128974848"), 128_974_848);
        assert_eq!(units("129e6"), 129_000_000);
        assert_eq!(units("123Mi"), 123 << 20);
        assert_eq!(units("1k"), 1000);
        assert_eq!(units("1Ki"), 1024);
        assert_eq!(units("7Ei"), 7 << 60);
        assert_eq!(Quantity::parse("8Ei").unwrap().to_units_ceil(), Err(QuantityProblem::TooLarge));
        assert_eq!(units("1.5"), 2, "whole units round up");
        assert_eq!(units("500m"), 1);
        assert_eq!(units("1E"), 1_000_000_000_000_000_000);
    }

    #[test]
    fn negative_values_round_towards_zero_and_are_refused_as_resources() {
        assert_eq!(Quantity::parse("-1.5").unwrap().to_units_ceil().unwrap(), -1);
        assert!(Quantity::parse("-1").unwrap().is_negative());
        assert!(!Quantity::parse("-0").unwrap().is_negative());
        let err = parse_cpu_millis("-100m").unwrap_err();
        assert_eq!(err.problem, QuantityProblem::Negative);
        assert!(err.to_string().contains("\"-100m\""), "{err}");
    }

    #[test]
    fn malformed_input_is_an_error_naming_the_value() {
        assert_eq!(problem(""), QuantityProblem::Empty);
        assert_eq!(problem("   "), QuantityProblem::Empty);
        assert_eq!(problem("abc"), QuantityProblem::NotANumber);
        assert_eq!(problem("1.2.3"), QuantityProblem::NotANumber);
        assert_eq!(problem("."), QuantityProblem::NotANumber);
        assert_eq!(problem("-"), QuantityProblem::NotANumber);
        assert_eq!(problem("1GB"), QuantityProblem::UnknownSuffix);
        assert_eq!(problem("1 Gi"), QuantityProblem::NotANumber);
        assert_eq!(problem("1e"), QuantityProblem::BadExponent);
        assert_eq!(problem("1e+"), QuantityProblem::BadExponent);
        assert_eq!(problem("1e9999"), QuantityProblem::BadExponent);
        assert_eq!(problem("1mi"), QuantityProblem::UnknownSuffix);
        assert_eq!(problem("123456789012345678901234567890123456789"), QuantityProblem::TooManyDigits);
        let err = Quantity::parse("12x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid quantity \"12x\": unknown suffix (expected one of m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent like e3)"
        );
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert_eq!(Quantity::parse("16Ei").unwrap().to_units_ceil(), Err(QuantityProblem::TooLarge));
        assert_eq!(Quantity::parse("1e30").unwrap().to_milli_ceil(), Err(QuantityProblem::TooLarge));
        assert_eq!(Quantity::parse("1e-900").unwrap().to_units_ceil(), Ok(1));
        assert_eq!(Quantity::parse("0e900").unwrap().to_units_ceil(), Ok(0));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            if let Ok(q) = Quantity::parse(&s) {
                let _ = q.to_milli_ceil();
                let _ = q.to_units_ceil();
            }
        }

        #[test]
        fn integers_and_millis_round_trip(n in 0i64..1_000_000_000, m in 0i64..1_000_000_000) {
            proptest::prop_assert_eq!(units(&n.to_string()), n);
            proptest::prop_assert_eq!(milli(&format!("{m}m")), m);
            proptest::prop_assert_eq!(units(&format!("{n}Ki")), n * 1024);
        }

        #[test]
        fn decimal_and_milli_forms_agree(whole in 0i64..100_000, frac in 0i64..1000) {
            let decimal = format!("{whole}.{frac:03}");
            proptest::prop_assert_eq!(milli(&decimal), whole * 1000 + frac);
        }
    }
}
