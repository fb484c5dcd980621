//! Value transforms, each in both directions: inbound (native → canonical)
//! and outbound (canonical → native). Each returns a message a department's
//! engineer can act on when a value cannot be transformed.

use chrono::{DateTime, NaiveDate};
use serde_json::{Number, Value};

/// How a single value is transformed.
#[derive(Debug, Clone)]
pub enum Transform {
    /// Strings as they are (after the text options).
    Text,
    Integer,
    Number,
    Boolean,
    /// A date in the given strftime format ↔ canonical `YYYY-MM-DD`.
    Date(DateFormat),
    /// An instant in the given strftime format (with offset), or RFC 3339 when
    /// `None` ↔ canonical RFC 3339.
    DateTime(Option<String>),
    /// A code table: native code → canonical value, and back (the first native
    /// code listed for a canonical value is used outbound). Tables are small,
    /// so a linear scan beats hashing.
    Codes {
        inbound: Vec<(String, Value)>,
        outbound: Vec<(String, String)>,
        listed: String,
    },
    /// A Chinese amount such as `100万元人民币` ↔ `{"amount": 1000000, "currency": "CNY"}`.
    Amount,
}

/// A strftime date format, parsed once at load.
#[derive(Debug, Clone)]
pub struct DateFormat {
    text: String,
    items: Vec<chrono::format::Item<'static>>,
}

impl From<&str> for DateFormat {
    fn from(text: &str) -> Self {
        let items = chrono::format::StrftimeItems::new(text)
            .parse_to_owned()
            .unwrap_or_default();
        DateFormat {
            text: text.to_owned(),
            items,
        }
    }
}

impl DateFormat {
    fn parse(&self, s: &str) -> Result<NaiveDate, chrono::ParseError> {
        let mut parsed = chrono::format::Parsed::new();
        chrono::format::parse(&mut parsed, s, self.items.iter())?;
        parsed.to_naive_date()
    }
}

/// `YYYY-MM-DD` without going through a format string.
fn iso_date(d: NaiveDate) -> String {
    use chrono::Datelike;
    let (year, month, day) = (d.year(), d.month(), d.day());
    if !(0..=9999).contains(&year) {
        return format!("{year:04}-{month:02}-{day:02}");
    }
    // Four digits, two, two: written directly (this runs once per date
    // field of every record mapped).
    let digit = |n: u32| char::from(b'0' + (n % 10) as u8);
    let year = year as u32;
    let mut out = String::with_capacity(10);
    for n in [year / 1000, year / 100, year / 10, year] {
        out.push(digit(n));
    }
    out.push('-');
    out.push(digit(month / 10));
    out.push(digit(month));
    out.push('-');
    out.push(digit(day / 10));
    out.push(digit(day));
    out
}

/// Options applied to native strings before the transform.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextOptions {
    pub trim: bool,
    pub upper: bool,
}

impl Transform {
    /// As [`Transform::inbound`], taking the native value: a text that needs
    /// no change is moved, not copied.
    pub fn inbound_owned(&self, value: Value, text: TextOptions) -> Result<Value, String> {
        match (self, &value) {
            (Transform::Text, Value::String(s)) if !needs_text_change(s, text) => Ok(value),
            (Transform::Number, Value::Number(_)) => Ok(value),
            (Transform::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(value),
            _ => self.inbound(&value, text),
        }
    }

    pub fn inbound(&self, value: &Value, text: TextOptions) -> Result<Value, String> {
        // Text options first, on strings only; they allocate only when they change something.
        let owned;
        let value = match value {
            Value::String(s) if needs_text_change(s, text) => {
                owned = Value::String(apply_text(s, text));
                &owned
            }
            v => v,
        };
        match self {
            Transform::Text => match value {
                Value::String(_) => Ok(value.clone()),
                Value::Number(n) => Ok(Value::String(n.to_string())),
                Value::Bool(b) => Ok(Value::String(b.to_string())),
                other => Err(format!("expected text, got {}", kind(other))),
            },
            Transform::Integer => match value {
                Value::Number(n) if n.is_i64() || n.is_u64() => Ok(value.clone()),
                Value::Number(n) => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Value::from(f as i64)),
                    _ => Err(format!("expected a whole number, got {n}")),
                },
                Value::String(s) => s
                    .trim()
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| format!("expected a whole number, got {s:?}")),
                other => Err(format!("expected a whole number, got {}", kind(other))),
            },
            Transform::Number => match value {
                Value::Number(_) => Ok(value.clone()),
                Value::String(s) => {
                    parse_number(s.trim()).ok_or_else(|| format!("expected a number, got {s:?}"))
                }
                other => Err(format!("expected a number, got {}", kind(other))),
            },
            Transform::Boolean => match value {
                Value::Bool(_) => Ok(value.clone()),
                Value::String(s) => match s.trim() {
                    "true" | "1" | "Y" | "y" => Ok(Value::Bool(true)),
                    "false" | "0" | "N" | "n" => Ok(Value::Bool(false)),
                    _ => Err(format!("expected true/false, got {s:?}")),
                },
                Value::Number(n) if n.as_u64() == Some(1) => Ok(Value::Bool(true)),
                Value::Number(n) if n.as_u64() == Some(0) => Ok(Value::Bool(false)),
                other => Err(format!("expected true/false, got {}", kind(other))),
            },
            Transform::Date(fmt) => {
                let s = as_text(value)?;
                fmt.parse(s)
                    .map(|d| Value::String(iso_date(d)))
                    .map_err(|e| format!("cannot read {s:?} as a date in format {}: {e}", fmt.text))
            }
            Transform::DateTime(fmt) => {
                let s = as_text(value)?;
                let parsed = match fmt {
                    None => DateTime::parse_from_rfc3339(s),
                    Some(f) => DateTime::parse_from_str(s, f),
                };
                parsed.map(|t| Value::String(t.to_rfc3339())).map_err(|e| {
                    let f = fmt.as_deref().unwrap_or("RFC 3339");
                    format!("cannot read {s:?} as a date-time in format {f}: {e}")
                })
            }
            Transform::Codes {
                inbound, listed, ..
            } => {
                let number;
                let code = match value {
                    Value::String(s) => s.as_str(),
                    Value::Number(n) => {
                        number = n.to_string();
                        number.as_str()
                    }
                    other => return Err(format!("expected a code, got {}", kind(other))),
                };
                inbound
                    .iter()
                    .find(|(c, _)| c == code)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| format!("unknown code {code:?}; known codes: {listed}"))
            }
            Transform::Amount => parse_amount(as_text(value)?),
        }
    }

    pub fn outbound(&self, value: &Value) -> Result<Value, String> {
        match self {
            Transform::Text | Transform::Integer | Transform::Number | Transform::Boolean => {
                Ok(value.clone())
            }
            Transform::Date(fmt) => {
                let s = as_text(value)?;
                let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map_err(|e| format!("cannot read {s:?} as a canonical date: {e}"))?;
                render(d.format_with_items(fmt.items.iter()))
                    .map(Value::String)
                    .ok_or_else(|| format!("cannot write {s:?} in date format {}", fmt.text))
            }
            Transform::DateTime(fmt) => {
                let s = as_text(value)?;
                let t = DateTime::parse_from_rfc3339(s)
                    .map_err(|e| format!("cannot read {s:?} as an RFC 3339 date-time: {e}"))?;
                match fmt {
                    None => Ok(Value::String(t.to_rfc3339())),
                    Some(f) => render(t.format(f))
                        .map(Value::String)
                        .ok_or_else(|| format!("cannot write {s:?} in date-time format {f}")),
                }
            }
            Transform::Codes { outbound, .. } => {
                let s = as_text(value)?;
                outbound
                    .iter()
                    .find(|(v, _)| v == s)
                    .map(|(_, c)| Value::String(c.clone()))
                    .ok_or_else(|| format!("no native code for {s:?}"))
            }
            Transform::Amount => format_amount(value),
        }
    }
}

/// A chrono format written out, or `None` where `to_string` would panic:
/// the format is invalid or asks for a field the value does not have.
pub(crate) fn render(formatted: impl std::fmt::Display) -> Option<String> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{formatted}").ok().map(|()| out)
}

fn needs_text_change(s: &str, o: TextOptions) -> bool {
    let lower = || {
        if s.is_ascii() {
            s.bytes().any(|b| b.is_ascii_lowercase())
        } else {
            s.chars().any(char::is_lowercase)
        }
    };
    (o.trim && s.trim().len() != s.len()) || (o.upper && lower())
}

fn apply_text(s: &str, o: TextOptions) -> String {
    let s = if o.trim { s.trim() } else { s };
    if o.upper {
        s.to_uppercase()
    } else {
        s.to_owned()
    }
}

fn as_text(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("expected text, got {}", kind(value)))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn parse_number(s: &str) -> Option<Value> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::from(i));
    }
    s.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map(Value::Number)
}

/// Currency words, longest first so that `元人民币` wins over `元`.
const CURRENCIES: &[(&str, &str)] = &[
    ("人民币元", "CNY"),
    ("元人民币", "CNY"),
    ("人民币", "CNY"),
    ("美元", "USD"),
    ("港元", "HKD"),
    ("港币", "HKD"),
    ("欧元", "EUR"),
    ("日元", "JPY"),
    ("英镑", "GBP"),
    ("元", "CNY"),
];

/// Digits (without leading zeros) an amount with a fraction may have: 15,
/// as many as a float holds exactly.
const MAX_FRACTIONAL_MANTISSA: u128 = 1_000_000_000_000_000;

/// Parse `100万元人民币`, `50万美元`, `1000.5万元`, `3000000元`: digits with an
/// optional decimal part, an optional `万` (×10,000) or `亿` (×100,000,000),
/// then a currency word. Exact decimal arithmetic: no float rounding.
pub fn parse_amount(text: &str) -> Result<Value, String> {
    let s = text.trim().replace([',', '，'], "");
    let digits_end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(s.len(), |(i, _)| i);
    let (number, rest) = s.split_at(digits_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || frac_part.len() > 8
    {
        return Err(format!(
            "cannot read amount {text:?}: expected digits such as 100万元人民币, 50万美元 or 3000000元"
        ));
    }
    let (scale_exp, rest) = if let Some(r) = rest.strip_prefix('万') {
        (4u32, r)
    } else if let Some(r) = rest.strip_prefix('亿') {
        (8u32, r)
    } else {
        (0, rest)
    };
    let currency = if rest.is_empty() {
        return Err(format!(
            "amount {text:?} names no currency (元, 人民币, 美元, ...)"
        ));
    } else {
        CURRENCIES
            .iter()
            .find(|(word, _)| *word == rest)
            .map(|(_, code)| *code)
            .ok_or_else(|| format!("amount {text:?}: unknown currency {rest:?}"))?
    };
    // value = (int_part.frac_part) * 10^scale_exp, computed as an integer of minor units.
    let frac_len = frac_part.len() as u32;
    let mantissa: u128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| format!("amount {text:?} is too large"))?;
    let amount = if scale_exp >= frac_len {
        let whole = mantissa
            .checked_mul(10u128.pow(scale_exp - frac_len))
            .filter(|v| *v <= i64::MAX as u128)
            .ok_or_else(|| format!("amount {text:?} is too large"))?;
        Value::from(whole as i64)
    } else {
        let divisor = 10u128.pow(frac_len - scale_exp);
        if mantissa.is_multiple_of(divisor) {
            // Checked like a whole amount: `as i64` would wrap a larger one.
            let whole = mantissa / divisor;
            if whole > i64::MAX as u128 {
                return Err(format!("amount {text:?} is too large"));
            }
            Value::from(whole as i64)
        } else {
            // A fraction is kept as a float: up to 15 significant digits
            // a float holds the decimal exactly as written (and writes it
            // back so); more would be rounded silently.
            if mantissa >= MAX_FRACTIONAL_MANTISSA {
                return Err(format!(
                    "amount {text:?} has more than 15 significant digits with a fraction; \
                     round it or write it in whole units"
                ));
            }
            let f = mantissa as f64 / divisor as f64;
            Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| format!("amount {text:?} is not a number"))?
        }
    };
    Ok(serde_json::json!({ "amount": amount, "currency": currency }))
}

/// `{"amount": 1000000, "currency": "CNY"}` → `1000000元`; USD → `美元`, etc.
fn format_amount(value: &Value) -> Result<Value, String> {
    let amount = value
        .get("amount")
        .and_then(Value::as_number)
        .ok_or("expected an amount object with a numeric amount")?;
    let currency = value
        .get("currency")
        .and_then(Value::as_str)
        .ok_or("expected an amount object with a currency")?;
    let word = match currency {
        "CNY" => "元",
        other => CURRENCIES
            .iter()
            .find(|(_, code)| *code == other)
            .map(|(word, _)| *word)
            .ok_or_else(|| format!("no native word for currency {other:?}"))?,
    };
    // Plain decimals, as parse_amount reads them: a float such as 1e-6 is
    // written 0.000001, never in exponent notation.
    let number = match amount.as_f64() {
        Some(f) if !(amount.is_i64() || amount.is_u64()) => format!("{f}"),
        _ => amount.to_string(),
    };
    Ok(Value::String(format!("{number}{word}")))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod iso_date_tests {
    use super::*;

    #[test]
    fn iso_dates_are_written_as_chrono_writes_them() {
        let mut d = NaiveDate::from_ymd_opt(1, 1, 1).unwrap();
        let last = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap();
        // Every 97th day across years 1 to 9999, and the edges.
        while d < last {
            assert_eq!(iso_date(d), d.format("%Y-%m-%d").to_string());
            d += chrono::Duration::days(97);
        }
        for d in [last, NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()] {
            assert_eq!(iso_date(d), d.format("%Y-%m-%d").to_string());
        }
        let before_year_one = NaiveDate::from_ymd_opt(-5, 3, 7).unwrap();
        assert_eq!(iso_date(before_year_one), "-005-03-07");
    }
}
