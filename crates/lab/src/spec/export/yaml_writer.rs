//! A serde serializer into a `yaml_rust2::Yaml` tree ([`YamlSer`]), so mappings keep the
//! order of the raw types' fields and maps when the lab file is written.

use serde::ser::{self, Serialize};
use yaml_rust2::yaml::Hash;
use yaml_rust2::Yaml;

/// Serializes into a `yaml_rust2::Yaml` tree (mapping order preserved).
pub(super) struct YamlSer;

/// Why a value cannot be written as YAML.
#[derive(Debug)]
pub(super) struct SerError(String);

impl std::fmt::Display for SerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SerError {}
impl ser::Error for SerError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        SerError(msg.to_string())
    }
}

/// A sequence being written: its items so far.
pub(super) struct SeqSer(Vec<Yaml>);
/// A mapping being written: its entries so far and a key waiting for its value.
pub(super) struct MapSer(Hash, Option<Yaml>);

fn key_of(y: Yaml) -> Yaml {
    y
}

impl ser::Serializer for YamlSer {
    type Ok = Yaml;
    type Error = SerError;
    type SerializeSeq = SeqSer;
    type SerializeTuple = SeqSer;
    type SerializeTupleStruct = SeqSer;
    type SerializeTupleVariant = SeqSer;
    type SerializeMap = MapSer;
    type SerializeStruct = MapSer;
    type SerializeStructVariant = MapSer;

    fn serialize_bool(self, v: bool) -> Result<Yaml, SerError> {
        Ok(Yaml::Boolean(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Yaml, SerError> {
        i64::try_from(v)
            .map(Yaml::Integer)
            .map_err(|_| SerError(format!("{v} is too large")))
    }
    fn serialize_f32(self, v: f32) -> Result<Yaml, SerError> {
        Ok(Yaml::Real(v.to_string()))
    }
    fn serialize_f64(self, v: f64) -> Result<Yaml, SerError> {
        Ok(Yaml::Real(v.to_string()))
    }
    fn serialize_char(self, v: char) -> Result<Yaml, SerError> {
        Ok(Yaml::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Yaml, SerError> {
        Ok(Yaml::String(v.to_string()))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Yaml, SerError> {
        Err(SerError("bytes are not supported".into()))
    }
    fn serialize_none(self) -> Result<Yaml, SerError> {
        Ok(Yaml::Null)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<Yaml, SerError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Yaml, SerError> {
        Ok(Yaml::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Yaml, SerError> {
        Ok(Yaml::Null)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Yaml, SerError> {
        Ok(Yaml::String(variant.to_string()))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Yaml, SerError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Yaml, SerError> {
        let mut h = Hash::new();
        h.insert(Yaml::String(variant.into()), v.serialize(YamlSer)?);
        Ok(Yaml::Hash(h))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<SeqSer, SerError> {
        Ok(SeqSer(Vec::new()))
    }
    fn serialize_tuple(self, _: usize) -> Result<SeqSer, SerError> {
        Ok(SeqSer(Vec::new()))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<SeqSer, SerError> {
        Ok(SeqSer(Vec::new()))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<SeqSer, SerError> {
        Err(SerError("tuple variants are not supported".into()))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<MapSer, SerError> {
        Ok(MapSer(Hash::new(), None))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<MapSer, SerError> {
        Ok(MapSer(Hash::new(), None))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<MapSer, SerError> {
        Err(SerError("struct variants are not supported".into()))
    }
}

impl ser::SerializeSeq for SeqSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), SerError> {
        self.0.push(v.serialize(YamlSer)?);
        Ok(())
    }
    fn end(self) -> Result<Yaml, SerError> {
        Ok(Yaml::Array(self.0))
    }
}

impl ser::SerializeTuple for SeqSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), SerError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Yaml, SerError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), SerError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Yaml, SerError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for SeqSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), SerError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Yaml, SerError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for MapSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, k: &T) -> Result<(), SerError> {
        self.1 = Some(key_of(k.serialize(YamlSer)?));
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), SerError> {
        let k = self
            .1
            .take()
            .ok_or_else(|| SerError("value without key".into()))?;
        self.0.insert(k, v.serialize(YamlSer)?);
        Ok(())
    }
    fn end(self) -> Result<Yaml, SerError> {
        Ok(Yaml::Hash(self.0))
    }
}

impl ser::SerializeStruct for MapSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), SerError> {
        self.0
            .insert(Yaml::String(key.into()), v.serialize(YamlSer)?);
        Ok(())
    }
    fn end(self) -> Result<Yaml, SerError> {
        Ok(Yaml::Hash(self.0))
    }
}

impl ser::SerializeStructVariant for MapSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), SerError> {
        ser::SerializeStruct::serialize_field(self, key, v)
    }
    fn end(self) -> Result<Yaml, SerError> {
        ser::SerializeStruct::end(self)
    }
}
