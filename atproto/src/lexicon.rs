//! Lexicon v1: checking schema documents, and validating record data against them.
//!
//! The validator is driven by the JSON documents themselves (nothing is generated or
//! hand-coded per record type): a [`Catalog`] holds parsed documents, resolves `ref` and
//! `union` targets across them, and walks a record's data-model value alongside its schema.

use std::collections::HashMap;

use ipld_core::ipld::Ipld;
use serde_json::{Map, Value};
use thiserror::Error;
use unicode_segmentation::UnicodeSegmentation;

use crate::syntax;

/// Deepest schema/data nesting walked, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

/// A schema document that breaks the Lexicon rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid lexicon {id}: {reason}")]
pub struct SchemaError {
    /// The document's id (or `?` if it has none).
    pub id: String,
    /// What is wrong, with the path of the definition.
    pub reason: String,
}

/// Record data that does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {reason}")]
pub struct ValidationError {
    /// Where in the record, e.g. `record/content/text`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

fn verr<T>(path: &str, reason: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError {
        path: path.to_string(),
        reason: reason.into(),
    })
}

/// A checked Lexicon document.
#[derive(Debug, Clone)]
pub struct LexiconDoc {
    /// The NSID.
    pub id: String,
    /// Its definitions by name.
    pub defs: Map<String, Value>,
}

const PRIMARY: &[&str] = &[
    "record",
    "query",
    "procedure",
    "subscription",
    "permission-set",
];
const FIELD_TYPES: &[&str] = &[
    "boolean", "integer", "string", "bytes", "cid-link", "blob", "array", "object", "ref", "union",
    "unknown", "token", "null",
];

impl LexiconDoc {
    /// Parses and checks a document.
    pub fn parse(doc: &Value) -> Result<Self, SchemaError> {
        let id_str = doc
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let err = |reason: String| SchemaError {
            id: id_str.clone(),
            reason,
        };
        let obj = doc.as_object().ok_or_else(|| err("not an object".into()))?;
        if obj.get("lexicon").and_then(Value::as_i64) != Some(1) {
            return Err(err("\"lexicon\" must be the integer 1".into()));
        }
        let id = obj
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| err("\"id\" must be a string".into()))?;
        syntax::validate_nsid(id).map_err(|e| err(e.to_string()))?;
        let defs = obj
            .get("defs")
            .and_then(Value::as_object)
            .ok_or_else(|| err("\"defs\" must be an object".into()))?;
        for (name, def) in defs {
            let ty = def.get("type").and_then(Value::as_str).unwrap_or_default();
            if PRIMARY.contains(&ty) {
                if name != "main" {
                    return Err(err(format!("#{name}: a {ty} must be the main definition")));
                }
            } else if matches!(ty, "ref" | "union" | "unknown" | "null")
                || !FIELD_TYPES.contains(&ty)
            {
                return Err(err(format!(
                    "#{name}: type {ty:?} cannot be defined at top level"
                )));
            }
            check_def(def, 0).map_err(|reason| err(format!("#{name}: {reason}")))?;
        }
        Ok(LexiconDoc {
            id: id.to_string(),
            defs: defs.clone(),
        })
    }
}

/// Structural checks on one definition and what it contains.
fn check_def(def: &Value, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("nested too deeply".into());
    }
    let obj = def.as_object().ok_or("definition is not an object")?;
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or("missing \"type\"")?;
    let sub = |key: &str| -> Result<(), String> {
        match obj.get(key) {
            Some(v) => check_def(v, depth + 1).map_err(|e| format!("{key}: {e}")),
            None => Ok(()),
        }
    };
    match ty {
        "record" => {
            let key = obj
                .get("key")
                .and_then(Value::as_str)
                .ok_or("record needs \"key\"")?;
            if !matches!(key, "tid" | "nsid" | "any" | "record-key") && !key.starts_with("literal:")
            {
                return Err(format!("unknown record key type {key:?}"));
            }
            let record = obj.get("record").ok_or("record needs \"record\"")?;
            if record.get("type").and_then(Value::as_str) != Some("object") {
                return Err("record's \"record\" must be an object schema".into());
            }
            sub("record")
        }
        "object" | "params" => {
            let props = match obj.get("properties") {
                None if ty == "params" => return Ok(()),
                None => return Err("object needs \"properties\"".into()),
                Some(p) => p.as_object().ok_or("\"properties\" must be an object")?,
            };
            for (name, p) in props {
                check_def(p, depth + 1).map_err(|e| format!("{name}: {e}"))?;
            }
            for list in ["required", "nullable"] {
                if let Some(v) = obj.get(list) {
                    let names = v.as_array().ok_or(format!("\"{list}\" must be an array"))?;
                    if names.iter().any(|n| n.as_str().is_none()) {
                        return Err(format!("\"{list}\" must list names"));
                    }
                }
            }
            Ok(())
        }
        "array" => {
            let items = obj.get("items").ok_or("array needs \"items\"")?;
            check_def(items, depth + 1).map_err(|e| format!("items: {e}"))
        }
        "ref" => obj
            .get("ref")
            .and_then(Value::as_str)
            .map(|_| ())
            .ok_or_else(|| "ref needs \"ref\"".into()),
        "union" => match obj.get("refs").and_then(Value::as_array) {
            Some(refs) if refs.iter().all(Value::is_string) => Ok(()),
            _ => Err("union needs \"refs\" (strings)".into()),
        },
        "query" | "procedure" | "subscription" => {
            sub("parameters")?;
            for io in ["input", "output", "message"] {
                if let Some(body) = obj.get(io) {
                    if let Some(schema) = body.get("schema") {
                        check_def(schema, depth + 1).map_err(|e| format!("{io}: {e}"))?;
                    }
                }
            }
            Ok(())
        }
        "permission-set" => match obj.get("permissions") {
            Some(Value::Array(_)) => Ok(()),
            _ => Err("permission-set needs \"permissions\"".into()),
        },
        t if FIELD_TYPES.contains(&t) || t == "permission" => Ok(()),
        t => Err(format!("unknown type {t:?}")),
    }
}

/// A set of Lexicon documents that reference each other.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    docs: HashMap<String, LexiconDoc>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Catalog::default()
    }

    /// Checks and adds a document (replacing one with the same id).
    pub fn add(&mut self, doc: &Value) -> Result<&LexiconDoc, SchemaError> {
        let doc = LexiconDoc::parse(doc)?;
        let id = doc.id.clone();
        self.docs.insert(id.clone(), doc);
        Ok(&self.docs[&id])
    }

    /// The document with this NSID.
    pub fn get(&self, nsid: &str) -> Option<&LexiconDoc> {
        self.docs.get(nsid)
    }

    /// Every document's NSID.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.docs.keys().map(String::as_str)
    }

    /// The definition a reference names, relative to document `base`.
    fn resolve(&self, base: &str, reference: &str) -> Option<(&str, &Value)> {
        let (nsid, name) = match reference.split_once('#') {
            Some(("", name)) => (base, name),
            Some((nsid, name)) => (nsid, name),
            None => (reference, "main"),
        };
        let doc = self.docs.get(nsid)?;
        doc.defs.get(name).map(|d| (doc.id.as_str(), d))
    }

    /// Validates a record stored at `collection/rkey`: its `$type` names the collection,
    /// the collection's main definition is a record, the key fits, and the data matches.
    pub fn validate_record(
        &self,
        collection: &str,
        rkey: &str,
        data: &Ipld,
    ) -> Result<(), ValidationError> {
        let Ipld::Map(map) = data else {
            return verr("record", "must be an object");
        };
        match map.get("$type") {
            Some(Ipld::String(t)) if t == collection => {}
            Some(Ipld::String(t)) => {
                return verr(
                    "record/$type",
                    format!("{t} does not match collection {collection}"),
                )
            }
            _ => return verr("record/$type", "missing"),
        }
        let Some((base, def)) = self.resolve(collection, collection) else {
            return verr("record", format!("no lexicon for {collection}"));
        };
        if def.get("type").and_then(Value::as_str) != Some("record") {
            return verr("record", format!("{collection} is not a record type"));
        }
        let key = def.get("key").and_then(Value::as_str).unwrap_or("any");
        let key_ok = match key {
            "tid" => syntax::validate_tid(rkey).is_ok(),
            "nsid" => syntax::validate_nsid(rkey).is_ok(),
            "any" | "record-key" => syntax::validate_record_key(rkey).is_ok(),
            literal => literal.strip_prefix("literal:") == Some(rkey),
        };
        if !key_ok {
            return verr("rkey", format!("{rkey:?} is not a valid key of type {key}"));
        }
        let schema = def.get("record").unwrap_or(&Value::Null);
        self.validate_value(base, schema, data, "record", 0)
    }

    /// Validates `data` against the definition `reference` (e.g. `nsid#name`).
    pub fn validate(&self, reference: &str, data: &Ipld) -> Result<(), ValidationError> {
        let base = reference.split('#').next().unwrap_or(reference);
        let Some((base, def)) = self.resolve(base, reference) else {
            return verr("", format!("unknown definition {reference}"));
        };
        let schema = if def.get("type").and_then(Value::as_str) == Some("record") {
            def.get("record").unwrap_or(&Value::Null)
        } else {
            def
        };
        self.validate_value(base, schema, data, "", 0)
    }

    fn validate_value(
        &self,
        base: &str,
        schema: &Value,
        data: &Ipld,
        path: &str,
        depth: usize,
    ) -> Result<(), ValidationError> {
        if depth > MAX_DEPTH {
            return verr(path, "nested too deeply");
        }
        let ty = schema
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let int = |k: &str| schema.get(k).and_then(Value::as_i64);
        let len = |k: &str| schema.get(k).and_then(Value::as_u64).map(|v| v as usize);
        match ty {
            "boolean" => {
                let Ipld::Bool(b) = data else {
                    return verr(path, "expected a boolean");
                };
                if schema
                    .get("const")
                    .and_then(Value::as_bool)
                    .is_some_and(|c| c != *b)
                {
                    return verr(path, "does not equal const");
                }
            }
            "integer" => {
                let Ipld::Integer(i) = data else {
                    return verr(path, "expected an integer");
                };
                let i = *i;
                if int("const").is_some_and(|c| i128::from(c) != i) {
                    return verr(path, "does not equal const");
                }
                if let Some(choices) = schema.get("enum").and_then(Value::as_array) {
                    if !choices
                        .iter()
                        .any(|c| c.as_i64().map(i128::from) == Some(i))
                    {
                        return verr(path, "not one of enum");
                    }
                }
                if int("minimum").is_some_and(|m| i < i128::from(m)) {
                    return verr(path, "below minimum");
                }
                if int("maximum").is_some_and(|m| i > i128::from(m)) {
                    return verr(path, "above maximum");
                }
            }
            "string" => {
                let Ipld::String(s) = data else {
                    return verr(path, "expected a string");
                };
                self.check_string(schema, s, path)?;
            }
            "bytes" => {
                let Ipld::Bytes(b) = data else {
                    return verr(path, "expected bytes");
                };
                if len("minLength").is_some_and(|m| b.len() < m) {
                    return verr(path, "bytes too short");
                }
                if len("maxLength").is_some_and(|m| b.len() > m) {
                    return verr(path, "bytes too long");
                }
            }
            "cid-link" => {
                if !matches!(data, Ipld::Link(_)) {
                    return verr(path, "expected a CID link");
                }
            }
            "blob" => check_blob(schema, data, path)?,
            "array" => {
                let Ipld::List(items) = data else {
                    return verr(path, "expected an array");
                };
                if len("minLength").is_some_and(|m| items.len() < m) {
                    return verr(path, "array too short");
                }
                if len("maxLength").is_some_and(|m| items.len() > m) {
                    return verr(path, "array too long");
                }
                let item_schema = schema.get("items").unwrap_or(&Value::Null);
                for (i, item) in items.iter().enumerate() {
                    self.validate_value(
                        base,
                        item_schema,
                        item,
                        &format!("{path}/{i}"),
                        depth + 1,
                    )?;
                }
            }
            "object" | "params" => {
                let Ipld::Map(map) = data else {
                    return verr(path, "expected an object");
                };
                let names = |k: &str| -> Vec<&str> {
                    schema
                        .get(k)
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default()
                };
                let nullable = names("nullable");
                for req in names("required") {
                    if !map.contains_key(req) {
                        return verr(&format!("{path}/{req}"), "required field missing");
                    }
                }
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    for (name, prop) in props {
                        let Some(value) = map.get(name) else { continue };
                        let p = format!("{path}/{name}");
                        if matches!(value, Ipld::Null) {
                            if nullable.contains(&name.as_str()) {
                                continue;
                            }
                            return verr(&p, "may not be null");
                        }
                        self.validate_value(base, prop, value, &p, depth + 1)?;
                    }
                }
            }
            "ref" => {
                let reference = schema
                    .get("ref")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let Some((nbase, def)) = self.resolve(base, reference) else {
                    return verr(path, format!("unresolved ref {reference}"));
                };
                if def.get("type").and_then(Value::as_str) == Some("token") {
                    let full = full_ref(nbase, reference);
                    return match data {
                        Ipld::String(s) if *s == full => Ok(()),
                        _ => verr(path, format!("expected token {full}")),
                    };
                }
                self.validate_value(nbase, def, data, path, depth + 1)?;
            }
            "union" => {
                let Ipld::Map(map) = data else {
                    return verr(path, "union value must be an object");
                };
                let Some(Ipld::String(t)) = map.get("$type") else {
                    return verr(path, "union value needs $type");
                };
                let refs: Vec<String> = schema
                    .get("refs")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(|r| full_ref(base, r))
                            .collect()
                    })
                    .unwrap_or_default();
                let t_full = if t.contains('#') {
                    t.clone()
                } else {
                    format!("{t}#main")
                };
                if let Some(r) = refs.iter().find(|r| **r == t_full) {
                    let Some((nbase, def)) = self.resolve(base, r) else {
                        return verr(path, format!("unresolved ref {r}"));
                    };
                    let def = if def.get("type").and_then(Value::as_str) == Some("record") {
                        def.get("record").unwrap_or(&Value::Null)
                    } else {
                        def
                    };
                    self.validate_value(nbase, def, data, path, depth + 1)?;
                } else if schema.get("closed").and_then(Value::as_bool) == Some(true) {
                    return verr(path, format!("{t} is not in the closed union"));
                }
            }
            "unknown" => {
                let Ipld::Map(map) = data else {
                    return verr(path, "unknown must be an object");
                };
                if matches!(map.get("$type"), Some(Ipld::String(t)) if t == "blob") {
                    return verr(path, "unknown may not be a blob");
                }
            }
            "token" => return verr(path, "a token is not a data type"),
            "null" => {
                if !matches!(data, Ipld::Null) {
                    return verr(path, "expected null");
                }
            }
            other => return verr(path, format!("schema has unknown type {other:?}")),
        }
        Ok(())
    }

    fn check_string(&self, schema: &Value, s: &str, path: &str) -> Result<(), ValidationError> {
        let len = |k: &str| schema.get(k).and_then(Value::as_u64).map(|v| v as usize);
        if let Some(c) = schema.get("const").and_then(Value::as_str) {
            if c != s {
                return verr(path, "does not equal const");
            }
        }
        if let Some(choices) = schema.get("enum").and_then(Value::as_array) {
            if !choices.iter().any(|c| c.as_str() == Some(s)) {
                return verr(path, "not one of enum");
            }
        }
        if len("minLength").is_some_and(|m| s.len() < m) {
            return verr(path, "string too short");
        }
        if len("maxLength").is_some_and(|m| s.len() > m) {
            return verr(path, "string too long");
        }
        if schema.get("minGraphemes").is_some() || schema.get("maxGraphemes").is_some() {
            let g = s.graphemes(true).count();
            if len("minGraphemes").is_some_and(|m| g < m) {
                return verr(path, "too few graphemes");
            }
            if len("maxGraphemes").is_some_and(|m| g > m) {
                return verr(path, "too many graphemes");
            }
        }
        if let Some(format) = schema.get("format").and_then(Value::as_str) {
            let checked = match format {
                "did" => syntax::validate_did(s),
                "handle" => syntax::validate_handle(s),
                "at-identifier" => syntax::validate_at_identifier(s),
                "nsid" => syntax::validate_nsid(s),
                "at-uri" => syntax::validate_at_uri(s),
                "cid" => syntax::validate_cid(s),
                "datetime" => syntax::validate_datetime(s),
                "language" => syntax::validate_language(s),
                "uri" => syntax::validate_uri(s),
                "tid" => syntax::validate_tid(s),
                "record-key" => syntax::validate_record_key(s),
                _ => Ok(()),
            };
            if let Err(e) = checked {
                return verr(path, e.to_string());
            }
        }
        Ok(())
    }
}

fn full_ref(base: &str, reference: &str) -> String {
    match reference.split_once('#') {
        Some(("", name)) => format!("{base}#{name}"),
        Some(_) => reference.to_string(),
        None => format!("{reference}#main"),
    }
}

fn check_blob(schema: &Value, data: &Ipld, path: &str) -> Result<(), ValidationError> {
    let Ipld::Map(map) = data else {
        return verr(path, "expected a blob");
    };
    let (
        Some(Ipld::String(t)),
        Some(Ipld::Link(_)),
        Some(Ipld::String(mime)),
        Some(Ipld::Integer(size)),
    ) = (
        map.get("$type"),
        map.get("ref"),
        map.get("mimeType"),
        map.get("size"),
    )
    else {
        return verr(path, "blob needs $type, ref, mimeType and size");
    };
    if t != "blob" {
        return verr(path, "blob $type must be \"blob\"");
    }
    if let Some(max) = schema.get("maxSize").and_then(Value::as_i64) {
        if *size > i128::from(max) {
            return verr(path, "blob too large");
        }
    }
    if let Some(accept) = schema.get("accept").and_then(Value::as_array) {
        let ok = accept.iter().filter_map(Value::as_str).any(|pattern| {
            match pattern.strip_suffix("/*") {
                Some(prefix) => mime.split('/').next() == Some(prefix),
                None => pattern == "*/*" || pattern == mime,
            }
        });
        if !ok {
            return verr(path, format!("blob type {mime} not accepted"));
        }
    }
    Ok(())
}
