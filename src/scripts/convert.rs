//! Protocol values to Rhai values and back.
//!
//! Integers are ints, strings holding UTF-8 are strings and other byte
//! strings are blobs, lists are arrays, dicts are maps (the first of
//! repeated keys wins, as in [`Value::get`]). Back: strings and blobs
//! become byte strings, `true`/`false` 1/0, `()` the empty string; a float
//! or any other type cannot be sent.

use rhai::{Array, Blob, Dynamic, Map};

use crate::codec::{IntoKey, Value};

/// A Rhai value for a protocol value.
pub fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Int(i) => Dynamic::from_int(*i),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => Dynamic::from(s.to_string()),
            Err(_) => Dynamic::from_blob(b.clone()),
        },
        Value::List(l) => Dynamic::from_array(l.iter().map(to_dynamic).collect()),
        Value::Dict(d) => {
            let mut map = Map::new();
            for (k, v) in d {
                map.entry(String::from_utf8_lossy(k).as_ref().into())
                    .or_insert_with(|| to_dynamic(v));
            }
            Dynamic::from_map(map)
        }
    }
}

/// The protocol value for a Rhai value, or the name of the type that has
/// none.
pub fn to_value(d: &Dynamic) -> Result<Value, String> {
    if d.is_unit() {
        return Ok(Value::empty());
    }
    if let Ok(i) = d.as_int() {
        return Ok(Value::Int(i));
    }
    if let Ok(b) = d.as_bool() {
        return Ok(Value::Int(b.into()));
    }
    if d.is_string() || d.is_char() {
        return Ok(Value::str(&d.to_string()));
    }
    if d.is_blob() {
        let blob = d.read_lock::<Blob>().ok_or("a locked blob")?;
        return Ok(Value::Bytes(blob.clone()));
    }
    if d.is_array() {
        let array = d.read_lock::<Array>().ok_or("a locked array")?;
        return array
            .iter()
            .map(to_value)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List);
    }
    if d.is_map() {
        let map = d.read_lock::<Map>().ok_or("a locked map")?;
        let mut pairs = Vec::with_capacity(map.len());
        for (k, v) in map.iter() {
            pairs.push((k.to_string().into_key(), to_value(v)?));
        }
        return Ok(Value::Dict(pairs));
    }
    Err(format!("a value of type {} cannot be sent", d.type_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_go_to_rhai_and_back() {
        let v = Value::dict([
            ("int", Value::Int(-7)),
            ("text", Value::str("héllo")),
            ("bytes", Value::Bytes(vec![0xff, 0])),
            (
                "list",
                Value::List(vec![Value::Int(1), Value::dict([("a", Value::empty())])]),
            ),
        ]);
        let d = to_dynamic(&v);
        assert!(d.is_map());
        let back = to_value(&d).unwrap();
        assert_eq!(back.to_bencode().unwrap(), v.to_bencode().unwrap());
    }

    #[test]
    fn the_first_of_repeated_keys_wins_and_floats_are_refused() {
        let v = Value::Dict(vec![
            (b"k".to_vec().into(), Value::Int(1)),
            (b"k".to_vec().into(), Value::Int(2)),
        ]);
        let d = to_dynamic(&v);
        assert_eq!(to_value(&d).unwrap(), Value::dict([("k", Value::Int(1))]));
        assert!(to_value(&Dynamic::from_float(1.5)).is_err());
        assert_eq!(to_value(&Dynamic::TRUE).unwrap(), Value::Int(1));
        assert_eq!(to_value(&Dynamic::UNIT).unwrap(), Value::empty());
    }
}
