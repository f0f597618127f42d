//! What every resource shares: `type` tags, metadata, list pages, the
//! pass-through map, open string enums, and the parser that names fields.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// Fields an object carries that this model does not name: kept, so they
/// pass through unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extra(pub serde_json::Map<String, serde_json::Value>);

impl Extra {
    pub fn new() -> Extra {
        Extra::default()
    }
}

impl std::ops::Deref for Extra {
    type Target = serde_json::Map<String, serde_json::Value>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Extra {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Serialize for Extra {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Extra {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = serde_json::Map::deserialize(d)?;
        // The round-trip test fails on a field the model should name.
        #[cfg(test)]
        crate::roundtrip::saw_extra(&m);
        Ok(Extra(m))
    }
}

/// A resource's metadata: up to 16 string pairs.
pub type Metadata = BTreeMap<String, String>;

/// Metadata as a request sends it: a merge patch, `null` deletes a key.
pub type MetadataPatch = BTreeMap<String, Option<String>>;

/// A body that does not fit the model, naming the field (`tools[0].name`).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

// Tracking the path costs on every field, and almost every body is valid:
// each parse below runs plain serde first and tracks the path only to
// explain a failure (the second pass fails the same way, at the same place).

/// Parses `body` as `T`; an error names the field it is about.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    if let Ok(t) = serde_json::from_slice(body) {
        return Ok(t);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(field_error)
}

/// [`parse`] from an already parsed JSON value.
pub fn from_value<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, FieldError> {
    if let Ok(t) = T::deserialize(&v) {
        return Ok(t);
    }
    serde_path_to_error::deserialize(v).map_err(field_error)
}

fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let mut message = inner.to_string();
    // serde_json appends " at line 1 column 9": the path says it better.
    if inner.line() > 0
        && let Some(i) = message.rfind(" at line ")
    {
        message.truncate(i);
    }
    let n = Nested::new(&path, message);
    FieldError {
        path: if n.path.is_empty() {
            "body".into()
        } else {
            n.path
        },
        message: n.message,
    }
}

/// Marks a field path inside an error message: an object parsed by hand
/// (by its `type`) passes its fields' paths up through serde's
/// message-only errors, and [`parse`] joins them to the outer path.
const MARK: char = '\u{1}';

/// An error of a field inside a hand-parsed object.
pub(crate) struct Nested {
    path: String,
    message: String,
}

impl Nested {
    pub(crate) fn at(path: &str, message: &str) -> Nested {
        Nested {
            path: path.to_string(),
            message: message.to_string(),
        }
    }

    /// `message` at `path`, taking in a path the message carries.
    fn new(path: &str, message: String) -> Nested {
        let path = if path == "." { "" } else { path };
        let inner = message
            .strip_prefix(MARK)
            .and_then(|m| m.split_once(MARK))
            .map(|(sub, rest)| (sub.to_string(), rest.trim_start().to_string()));
        match inner {
            None => Nested {
                path: path.to_string(),
                message,
            },
            Some((sub, rest)) => Nested {
                path: match (path.is_empty(), sub.is_empty(), sub.starts_with('[')) {
                    (true, _, _) => sub,
                    (false, true, _) => path.to_string(),
                    (false, false, true) => format!("{path}{sub}"),
                    (false, false, false) => format!("{path}.{sub}"),
                },
                message: rest,
            },
        }
    }

    pub(crate) fn into_de<E: serde::de::Error>(self) -> E {
        E::custom(format!("{MARK}{}{MARK} {}", self.path, self.message))
    }
}

/// Parses a hand-dispatched variant's fields, keeping their paths.
pub(crate) fn parse_fields<T: DeserializeOwned>(
    fields: serde_json::Map<String, serde_json::Value>,
) -> Result<T, Nested> {
    let v = serde_json::Value::Object(fields);
    if let Ok(t) = T::deserialize(&v) {
        return Ok(t);
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        Nested::new(&path, e.into_inner().to_string())
    })
}

/// A `{"data", "next_page", "prev_page"}` list page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub next_page: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub prev_page: Option<Option<String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl<T> Page<T> {
    pub fn new(data: Vec<T>, next_page: Option<String>, prev_page: Option<String>) -> Page<T> {
        Page {
            data,
            next_page,
            prev_page: Some(prev_page),
            extra: Extra::new(),
        }
    }
}

/// `{"id", "type": "<what>_deleted"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// `Option<Option<T>>` for request fields: absent is `None`, `null` is
/// `Some(None)`. Use with `#[serde(default, skip_serializing_if =
/// "Option::is_none", with = "nullable")]`.
pub mod nullable {
    use super::*;

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }

    pub fn serialize<T: Serialize, S: Serializer>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(Some(v)) => v.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

/// A unit type that is one constant string on the wire: an object's
/// `"type": "session"`. Parsing anything else is an error.
macro_rules! tag {
    ($(#[$m:meta])* $name:ident = $value:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;

        impl $name {
            pub const VALUE: &'static str = $value;
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($value)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                if s == $value {
                    Ok($name)
                } else {
                    Err(serde::de::Error::invalid_value(
                        serde::de::Unexpected::Str(&s),
                        &$value,
                    ))
                }
            }
        }
    };
}
pub(crate) use tag;

/// A string enum whose unknown values are kept (`Other`), so a newer
/// server's value passes through and reads as "none of these".
macro_rules! open_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $value:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $variant,)+
            /// A value this model does not know, kept as sent.
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $value,)+
                    $name::Other(s) => s,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                match s {
                    $($value => $name::$variant,)+
                    _ => $name::Other(s.to_string()),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok($name::from(&*s))
            }
        }
    };
}
pub(crate) use open_enum;

/// A string enum with a fixed set of values (the API's `Literal[...]`), with
/// `as_str` for messages and storage.
macro_rules! closed_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $value:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $value)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($value => Ok($name::$variant),)+
                    _ => Err(format!(
                        "one of {}",
                        [$($value),+].join(", ")
                    )),
                }
            }
        }
    };
}
pub(crate) use closed_enum;
