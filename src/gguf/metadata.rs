//! The key-value table of a GGUF file, in file order, with typed getters.

use std::collections::HashMap;

use super::error::GgufError;
use super::value::{Array, FromValue, Value};

/// Metadata key-value pairs in file order, with lookup by key. Keys are unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair, or replaces the value of a key already present (keeping
    /// its position). Returns the value it replaced.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        match self.index.get(&key) {
            Some(&i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
                None
            }
        }
    }

    /// Number of key-value pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Pairs in file order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The value of `key`, or [`GgufError::MissingKey`].
    pub fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_owned(),
        })
    }

    /// The value of `key` as `T`: [`GgufError::MissingKey`] if absent,
    /// [`GgufError::WrongType`] if it has another type.
    pub fn get_as<'a, T: FromValue<'a>>(&'a self, key: &str) -> Result<T, GgufError> {
        let value = self.require(key)?;
        T::from_value(value).ok_or_else(|| wrong_type(key, T::EXPECTED, value))
    }

    /// Like [`Metadata::get_as`], but a missing key is `Ok(None)`.
    pub fn get_opt<'a, T: FromValue<'a>>(&'a self, key: &str) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => T::from_value(value)
                .map(Some)
                .ok_or_else(|| wrong_type(key, T::EXPECTED, value)),
        }
    }

    /// The value of `key`, which must be a `u32` (see [`Metadata::get_as`]).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be an `i32` (see [`Metadata::get_as`]).
    pub fn get_i32(&self, key: &str) -> Result<i32, GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be a `u64` (see [`Metadata::get_as`]).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be an `i64` (see [`Metadata::get_as`]).
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be an `f32` (see [`Metadata::get_as`]).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be an `f64` (see [`Metadata::get_as`]).
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be a bool (see [`Metadata::get_as`]).
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be a string (see [`Metadata::get_as`]).
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be an array of any element type (see [`Metadata::get_as`]).
    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be an array of strings (see [`Metadata::get_as`]).
    pub fn get_str_array(&self, key: &str) -> Result<&[String], GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be an array of `u32` (see [`Metadata::get_as`]).
    pub fn get_u32_array(&self, key: &str) -> Result<&[u32], GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be an array of `i32` (see [`Metadata::get_as`]).
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32], GgufError> {
        self.get_as(key)
    }

    /// The value of `key`, which must be an array of `f32` (see [`Metadata::get_as`]).
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32], GgufError> {
        self.get_as(key)
    }

    /// An integer of any width and signedness, as a `u64`: for counts that
    /// writers store inconsistently (`u32` in one file, `i32` or `u64` in
    /// another). Negative values are [`GgufError::OutOfRange`].
    pub fn get_unsigned(&self, key: &str) -> Result<u64, GgufError> {
        let value = self.require(key)?;
        if !value.is_integer() {
            return Err(wrong_type(key, "an integer", value));
        }
        value.as_unsigned().ok_or_else(|| GgufError::OutOfRange {
            key: key.to_owned(),
            value: value.to_string(),
            target: "an unsigned integer",
        })
    }

    /// Like [`Metadata::get_unsigned`], narrowed to `u32`.
    pub fn get_unsigned_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.get_unsigned(key)?;
        u32::try_from(v).map_err(|_| GgufError::OutOfRange {
            key: key.to_owned(),
            value: v.to_string(),
            target: "u32",
        })
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::WrongType {
        key: key.to_owned(),
        expected,
        found: found.type_description(),
    }
}
