//! Digests that tie a step to its arguments, and the idempotency key a
//! step's every attempt carries.
//!
//! Both must be the same on every run and replay, on every machine: the
//! argument digest is SHA-256 over a canonical JSON form (object keys
//! sorted, no spaces), whatever order the program built the object in.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace,
/// serde_json's escaping and number form.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `sha256:` and the hex SHA-256 of the canonical JSON of `args`.
pub fn args_digest(args: &Value) -> String {
    let hash = Sha256::digest(canonical_json(args).as_bytes());
    format!("sha256:{}", hex::encode(hash))
}

/// `sha256:` and the hex SHA-256 of `bytes`: the address of a blob
/// (a pinned program, a large result).
pub fn bytes_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The idempotency key of step `seq` of run `run_id`: the same for every
/// attempt and every relaunch, different for every step of every run.
pub fn idempotency_key(run_id: &str, seq: u64) -> String {
    let hash = Sha256::digest(format!("hearth-step\0{run_id}\0{seq}").as_bytes());
    format!("hk_{}", &hex::encode(hash)[..40])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_digest_but_values_do() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "é"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a": {"x": "é", "y": [1, 2]}, "b": 1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"é","y":[1,2]},"b":1}"#);
        assert_eq!(args_digest(&a), args_digest(&b));
        assert_ne!(
            args_digest(&a),
            args_digest(&json!({"b": 2, "a": {"x": "é", "y": [1, 2]}}))
        );
        // Array order is meaningful.
        assert_ne!(args_digest(&json!([1, 2])), args_digest(&json!([2, 1])));
        assert!(args_digest(&json!(null)).starts_with("sha256:"));
    }

    #[test]
    fn idempotency_keys_are_stable_per_step_and_distinct_across_steps_and_runs() {
        let k = idempotency_key("run-1", 3);
        assert_eq!(k, idempotency_key("run-1", 3));
        // Clients compute it too (docs/run-endpoint.md; hearth_run's test
        // checks the same value).
        assert_eq!(k, "hk_f00b9bad5dc9f10d03581bf6a3d940b7bfc6c839");
        assert_ne!(k, idempotency_key("run-1", 4));
        assert_ne!(k, idempotency_key("run-2", 3));
        // No ambiguity from concatenation: ("run-1", 23) vs ("run-12", 3).
        assert_ne!(idempotency_key("run-1", 23), idempotency_key("run-12", 3));
        assert_eq!(k.len(), 43);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The canonical form parses back to the same value, so the digest
        /// is a function of the value alone.
        #[test]
        fn canonical_json_round_trips(value in json_value()) {
            let text = canonical_json(&value);
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&back, &value);
            prop_assert_eq!(canonical_json(&back), text);
        }
    }
}
