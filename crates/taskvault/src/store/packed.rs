//! A run's document packed against a template: the runs of one function (or one command) write
//! documents of the same shape, differing in a few values (the arguments, their digest, the
//! output's digest). The first such document is kept once as the template of their shared body;
//! every later one stores only its values, in document order, a leaf equal to the template's as
//! one byte, and digests as their 32 bytes rather than 64 hex digits. A document of another
//! shape is stored as its JSON text instead.
//!
//! Encoding: one version byte ([`PACKED_V1`]), then the leaves as a `postcard` sequence of
//! [`Leaf`]. A leaf is any value that is not a non-empty array or object.

use base64::Engine as _;
use serde_json::Value;

/// The first byte of a packed document.
pub(crate) const PACKED_V1: u8 = 1;

/// One value of a packed document.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Leaf {
    /// The template's value.
    Same,
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    /// `blake3:` and 64 lowercase hex digits.
    Blake3([u8; 32]),
    /// `sha256:` and 64 lowercase hex digits.
    Sha256([u8; 32]),
    /// 64 lowercase hex digits (run ids, keys).
    Hex([u8; 32]),
    /// 32 bytes in standard, padded base64 (key ingredients).
    Base64([u8; 32]),
    /// Anything else (an empty array or object): its JSON.
    Json(String),
}

fn is_leaf(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => true,
    }
}

/// Whether `a` and `b` have the same arrays and objects, with the same keys in the same order.
fn same_shape(a: &Value, b: &Value) -> bool {
    match (is_leaf(a), is_leaf(b)) {
        (true, true) => return true,
        (false, false) => {}
        _ => return false,
    }
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_shape(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((k, p), (l, q))| k == l && same_shape(p, q))
        }
        _ => false,
    }
}

fn leaves<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) if !a.is_empty() => a.iter().for_each(|x| leaves(x, out)),
        Value::Object(o) if !o.is_empty() => o.values().for_each(|x| leaves(x, out)),
        leaf => out.push(leaf),
    }
}

fn leaves_mut<'a>(v: &'a mut Value, out: &mut Vec<&'a mut Value>) {
    if is_leaf(v) {
        out.push(v);
        return;
    }
    match v {
        Value::Array(a) => a.iter_mut().for_each(|x| leaves_mut(x, out)),
        Value::Object(o) => o.values_mut().for_each(|x| leaves_mut(x, out)),
        _ => unreachable!("a leaf"),
    }
}

/// Whether `s` is made of lowercase hex digits only (the form ids, keys and digests are written in).
pub(crate) fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The 32 bytes `s` spells, when it is 64 lowercase hex digits.
pub(crate) fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn base64_32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 44 {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    let out: [u8; 32] = bytes.try_into().ok()?;
    // Only a form that encodes back to the same text.
    (base64::engine::general_purpose::STANDARD.encode(out) == s).then_some(out)
}

fn leaf_of(v: &Value) -> Leaf {
    match v {
        Value::Null => Leaf::Null,
        Value::Bool(b) => Leaf::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Leaf::Int(i),
            (None, Some(u), _) => Leaf::UInt(u),
            (None, None, Some(f)) => Leaf::Float(f),
            _ => Leaf::Json(v.to_string()),
        },
        Value::String(s) => {
            if let Some(h) = s.strip_prefix("blake3:").and_then(hex32) {
                Leaf::Blake3(h)
            } else if let Some(h) = s.strip_prefix("sha256:").and_then(hex32) {
                Leaf::Sha256(h)
            } else if let Some(h) = hex32(s) {
                Leaf::Hex(h)
            } else if let Some(b) = base64_32(s) {
                Leaf::Base64(b)
            } else {
                Leaf::Text(s.clone())
            }
        }
        other => Leaf::Json(other.to_string()),
    }
}

fn value_of(l: Leaf) -> Result<Value, String> {
    Ok(match l {
        Leaf::Same => unreachable!("resolved by the caller"),
        Leaf::Null => Value::Null,
        Leaf::Bool(b) => Value::Bool(b),
        Leaf::Int(i) => Value::from(i),
        Leaf::UInt(u) => Value::from(u),
        Leaf::Float(f) => {
            Value::from(serde_json::Number::from_f64(f).ok_or("a packed number is not finite")?)
        }
        Leaf::Text(s) => Value::String(s),
        Leaf::Blake3(h) => Value::String(format!("blake3:{}", hex::encode(h))),
        Leaf::Sha256(h) => Value::String(format!("sha256:{}", hex::encode(h))),
        Leaf::Hex(h) => Value::String(hex::encode(h)),
        Leaf::Base64(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Leaf::Json(j) => serde_json::from_str(&j).map_err(|e| format!("a packed value: {e}"))?,
    })
}

/// `doc` packed against `template`, or `None` when their shapes differ. Blob digests are always
/// written out (never "the template's"), so a search of the stored bytes for a digest finds
/// every run that uses it.
pub(crate) fn pack(doc: &Value, template: &Value) -> Option<Vec<u8>> {
    if !same_shape(doc, template) {
        return None;
    }
    let (mut d, mut t) = (Vec::new(), Vec::new());
    leaves(doc, &mut d);
    leaves(template, &mut t);
    let packed: Vec<Leaf> = d
        .iter()
        .zip(&t)
        .map(|(v, w)| match leaf_of(v) {
            digest @ (Leaf::Blake3(_) | Leaf::Sha256(_)) => digest,
            _ if v == w => Leaf::Same,
            leaf => leaf,
        })
        .collect();
    let mut out = vec![PACKED_V1];
    out.extend(postcard::to_stdvec(&packed).expect("leaves serialize"));
    Some(out)
}

/// The document `bytes` (made by [`pack`] against `template`) stands for.
pub(crate) fn unpack(bytes: &[u8], template: &Value) -> Result<Value, String> {
    let Some((&PACKED_V1, rest)) = bytes.split_first() else {
        return Err("its packed document has an unknown version".into());
    };
    let packed: Vec<Leaf> =
        postcard::from_bytes(rest).map_err(|e| format!("its packed document: {e}"))?;
    let mut doc = template.clone();
    let mut slots = Vec::new();
    leaves_mut(&mut doc, &mut slots);
    if slots.len() != packed.len() {
        return Err(format!(
            "its packed document holds {} values where its template has {}",
            packed.len(),
            slots.len()
        ));
    }
    for (slot, leaf) in slots.into_iter().zip(packed) {
        if leaf != Leaf::Same {
            *slot = value_of(leaf)?;
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(i: u64, digest: &str) -> Value {
        json!({
            "details": {"args": {"i": i.to_string()}},
            "duration_ms": 0,
            "ingredients": {"extras": [["py.args", "2XrZXGmmR0FXC5zyaHozRUgAtkco8HsoHlBgXnhfOTk="]]},
            "outputs": [{"digest": digest, "kind": "file", "mode": 420, "path": "", "size": 5}],
            "parent": "0b98c4d914d62db5bb227875db20377a154150b2fef36c5fe5f865d67a79f655",
            "ratio": 0.5,
            "huge": u64::MAX,
            "empty": [],
        })
    }

    const D1: &str = "blake3:df63157b1cb2d3bfb7ad128553e6a4a4bea4470000f12453d3e1c46ae9f4c651";
    const D2: &str = "sha256:4cde2b9627ff162395a3d2d4638ee3089043f5b5e7efc5bdb81cc2f4f4ab6fd6";

    #[test]
    fn a_document_of_the_templates_shape_packs_small_and_unpacks_to_itself() {
        let template = run(0, D1);
        let mut doc = run(12345, D2);
        doc["ratio"] = json!(-1.25);
        doc["ingredients"]["extras"][0][1] = json!("ZLBtQv/MGOFjul5+cshr0Y8rfzpWfzc+cMPMwaNRBw8=");
        let packed = pack(&doc, &template).unwrap();
        assert!(packed.len() < 120, "{} bytes", packed.len());
        assert!(packed.len() * 3 < doc.to_string().len(), "{} bytes", packed.len());
        assert_eq!(unpack(&packed, &template).unwrap(), doc);
        // Against itself too.
        assert_eq!(unpack(&pack(&template, &template).unwrap(), &template).unwrap(), template);
    }

    #[test]
    fn digests_are_written_out_even_when_the_template_holds_the_same() {
        let t = run(0, D1);
        let packed = pack(&t, &t).unwrap();
        let raw = hex::decode(&D1["blake3:".len()..]).unwrap();
        assert!(packed.windows(32).any(|w| w == raw.as_slice()));
    }

    #[test]
    fn texts_that_only_look_like_digests_read_back_as_they_were() {
        let t = json!({"a": "x"});
        for s in [
            "DF63157B1CB2D3BFB7AD128553E6A4A4BEA4470000F12453D3E1C46AE9F4C651",
            "blake3:df63",
            "2XrZXGmmR0FXC5zyaHozRUgAtkco8HsoHlBgXnhfOTk",
            "2XrZXGmmR0FXC5zyaHozRUgAtkco8HsoHlBgXnhfOTl=",
            "",
            "é",
        ] {
            let doc = json!({"a": s});
            assert_eq!(unpack(&pack(&doc, &t).unwrap(), &t).unwrap(), doc, "{s}");
        }
    }

    #[test]
    fn another_shape_does_not_pack() {
        let t = run(0, D1);
        let mut extra_key = t.clone();
        extra_key["details"]["args"]["j"] = json!("1");
        let mut longer = t.clone();
        longer["outputs"].as_array_mut().unwrap().push(json!({"digest": D1}));
        let mut filled = t.clone();
        filled["empty"] = json!([1]);
        for doc in [extra_key, longer, filled, json!([]), json!({})] {
            assert!(pack(&doc, &t).is_none(), "{doc}");
        }
    }

    #[test]
    fn damaged_bytes_are_refused_not_misread() {
        let t = run(0, D1);
        let packed = pack(&run(7, D1), &t).unwrap();
        assert!(unpack(&packed[..packed.len() - 3], &t).is_err());
        assert!(unpack(&[2], &t).is_err());
        assert!(unpack(&[], &t).is_err());
        let mut fewer = vec![PACKED_V1];
        fewer.extend(postcard::to_stdvec(&vec![Leaf::Same]).unwrap());
        assert!(unpack(&fewer, &t).unwrap_err().contains("holds 1 values"));
    }
}
