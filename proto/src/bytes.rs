//! [`ByteString`]: bytes that are usually text (terminal data, argv, paths) but need not be.
//!
//! In JSON a valid UTF-8 value is a plain string. Anything else is an object
//! `{"escaped": "..."}` whose string keeps valid UTF-8 as is, writes a backslash as `\\` and
//! every other byte as `\xNN`, so the value round-trips exactly. In binary formats it is raw bytes.
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteString(pub Vec<u8>);

impl ByteString {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The bytes as text, invalid UTF-8 replaced (for display, never for storage).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// The escaped form described in the module docs.
    pub fn escaped(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for chunk in self.0.utf8_chunks() {
            for ch in chunk.valid().chars() {
                if ch == '\\' {
                    out.push_str("\\\\");
                } else {
                    out.push(ch);
                }
            }
            for byte in chunk.invalid() {
                out.push_str(&format!("\\x{byte:02x}"));
            }
        }
        out
    }

    /// Reverses [`ByteString::escaped`].
    pub fn unescape(text: &str) -> Result<Self, String> {
        let mut out = Vec::with_capacity(text.len());
        let mut rest = text;
        while let Some(pos) = rest.find('\\') {
            out.extend_from_slice(&rest.as_bytes()[..pos]);
            let tail = &rest[pos + 1..];
            if let Some(after) = tail.strip_prefix('\\') {
                out.push(b'\\');
                rest = after;
            } else if let Some(hex) = tail.strip_prefix('x').and_then(|t| t.get(..2)) {
                let byte = u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("bad escape \\x{hex} in escaped byte string"))?;
                out.push(byte);
                rest = &tail[3..];
            } else {
                return Err("a backslash must be followed by \\ or xNN".to_owned());
            }
        }
        out.extend_from_slice(rest.as_bytes());
        Ok(Self(out))
    }
}

impl fmt::Debug for ByteString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string_lossy())
    }
}

impl fmt::Display for ByteString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl From<&str> for ByteString {
    fn from(value: &str) -> Self {
        Self(value.as_bytes().to_vec())
    }
}

impl From<Vec<u8>> for ByteString {
    fn from(value: Vec<u8>) -> Self {
        Self(value)
    }
}

impl From<&[u8]> for ByteString {
    fn from(value: &[u8]) -> Self {
        Self(value.to_vec())
    }
}

impl Serialize for ByteString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return serializer.serialize_bytes(&self.0);
        }
        match std::str::from_utf8(&self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("escaped", &self.escaped())?;
                map.end()
            }
        }
    }
}

/// Most bytes reserved for an array of bytes before its bytes are read. MessagePack announces an
/// array's length up front (up to 2^32 - 1); reserving that much let an 11-byte value in a batch
/// allocate 4 GiB (found with the `batch` fuzz target's harness).
const MAX_RESERVE: usize = 64 * 1024;

impl<'de> Deserialize<'de> for ByteString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = ByteString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, bytes, or {\"escaped\": string}")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ByteString(v.as_bytes().to_vec()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(ByteString(v.into_bytes()))
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(ByteString(v.to_vec()))
            }

            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(ByteString(v))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The length an array announces is the sender's word: reserve no more than
                // MAX_RESERVE ahead of the bytes that actually arrive.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_RESERVE));
                while let Some(byte) = seq.next_element::<u8>()? {
                    out.push(byte);
                }
                Ok(ByteString(out))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut value = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "escaped" {
                        let text: String = map.next_value()?;
                        value = Some(ByteString::unescape(&text).map_err(de::Error::custom)?);
                    } else {
                        return Err(de::Error::unknown_field(&key, &["escaped"]));
                    }
                }
                value.ok_or_else(|| de::Error::missing_field("escaped"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_utf8_is_a_plain_json_string() {
        let value = ByteString::from("héllo \\ world\n");
        let json = serde_json::to_string(&value).unwrap();
        assert_eq!(json, "\"héllo \\\\ world\\n\"");
        assert_eq!(serde_json::from_str::<ByteString>(&json).unwrap(), value);
    }

    #[test]
    fn invalid_utf8_round_trips_through_the_escaped_form() {
        let value = ByteString(b"a\\b\xff\xfe c\x1b[0m\xe2\x82".to_vec());
        let json = serde_json::to_string(&value).unwrap();
        assert_eq!(
            json,
            r#"{"escaped":"a\\\\b\\xff\\xfe c\u001b[0m\\xe2\\x82"}"#
        );
        assert_eq!(serde_json::from_str::<ByteString>(&json).unwrap(), value);
    }

    #[test]
    fn binary_formats_carry_raw_bytes() {
        let value = ByteString(vec![0, 159, 146, 150]);
        let packed = rmp_serde::to_vec(&value).unwrap();
        assert_eq!(packed, vec![0xc4, 4, 0, 159, 146, 150]);
        assert_eq!(rmp_serde::from_slice::<ByteString>(&packed).unwrap(), value);
    }

    #[test]
    fn an_announced_array_length_is_not_reserved_up_front() {
        // An array32 header announcing 2^32 - 1 bytes, then one byte: an error once the data
        // ends, without reserving 4 GiB first (this crate's tests abort on any allocation over
        // 1 GiB, see the test allocator in lib.rs).
        let packed = [0xdd, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(rmp_serde::from_slice::<ByteString>(&packed).is_err());
        // An honest array of bytes still decodes.
        let packed = [0x93, 0x01, 0x02, 0xcc, 0xff];
        assert_eq!(
            rmp_serde::from_slice::<ByteString>(&packed).unwrap(),
            ByteString(vec![1, 2, 255])
        );
    }

    #[test]
    fn bad_escapes_are_refused() {
        assert!(ByteString::unescape("a\\q").is_err());
        assert!(ByteString::unescape("a\\x4").is_err());
        assert!(ByteString::unescape("a\\xzz").is_err());
    }
}
