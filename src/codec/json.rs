//! Protocol values to and from JSON, for the command-line tools.

use serde_json::json;

use super::Value;

/// A JSON value as a protocol value: numbers are integers, strings are
/// strings, booleans are 0/1, null is the empty string.
pub fn from_json(j: &serde_json::Value) -> Result<Value, String> {
    Ok(match j {
        serde_json::Value::Null => Value::empty(),
        serde_json::Value::Bool(b) => Value::Int((*b).into()),
        serde_json::Value::Number(n) => Value::Int(
            n.as_i64()
                .ok_or_else(|| format!("{n} is not a 64-bit integer"))?,
        ),
        serde_json::Value::String(s) => Value::str(s),
        serde_json::Value::Array(a) => {
            Value::List(a.iter().map(from_json).collect::<Result<_, _>>()?)
        }
        serde_json::Value::Object(o) => Value::Dict(
            o.iter()
                .map(|(k, v)| Ok((k.as_bytes().to_vec().into(), from_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// A protocol value as JSON: strings that are not UTF-8 become arrays of
/// byte values.
pub fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(i) => json!(i),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => json!(s),
            Err(_) => json!(b),
        },
        Value::List(l) => serde_json::Value::Array(l.iter().map(to_json).collect()),
        Value::Dict(d) => serde_json::Value::Object(
            d.iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), to_json(v)))
                .collect(),
        ),
    }
}
