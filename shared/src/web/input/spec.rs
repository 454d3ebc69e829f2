//! What a request body may hold, read from its type's OpenAPI schema: the
//! field names and, for each, the JSON types it accepts. The schema the
//! document publishes is thereby the list the decoder enforces; the two
//! cannot drift apart.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayItems, Schema, SchemaType, Type};

/// A JSON type a field accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
    Null,
}

impl Kind {
    fn of_type(t: &Type) -> Self {
        match t {
            Type::String => Kind::String,
            Type::Integer => Kind::Integer,
            Type::Number => Kind::Number,
            Type::Boolean => Kind::Boolean,
            Type::Array => Kind::Array,
            Type::Object => Kind::Object,
            Type::Null => Kind::Null,
        }
    }

    /// Whether `value` is of this JSON type (`5.0` is a number, not an integer).
    fn admits(self, value: &Value) -> bool {
        match (self, value) {
            (Kind::String, Value::String(_))
            | (Kind::Boolean, Value::Bool(_))
            | (Kind::Array, Value::Array(_))
            | (Kind::Object, Value::Object(_))
            | (Kind::Null, Value::Null)
            | (Kind::Number, Value::Number(_)) => true,
            (Kind::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
            _ => false,
        }
    }

    fn phrase(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Integer => "a whole number",
            Kind::Number => "a number",
            Kind::Boolean => "true or false",
            Kind::Array => "an array",
            Kind::Object => "a JSON object",
            Kind::Null => "null",
        }
    }
}

/// The JSON types of one field, and of its items when it is an array. `None`
/// means any (a schema this reader does not narrow down).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSpec {
    pub kinds: Option<Vec<Kind>>,
    pub items: Option<Vec<Kind>>,
}

impl FieldSpec {
    /// The problem with `value`, if its JSON type is not one the field takes:
    /// `Err((suffix, message))` where `suffix` is `""` or an item's `[i]`.
    pub fn check(&self, value: &Value) -> Result<(), (String, String)> {
        if let Some(kinds) = &self.kinds
            && !kinds.iter().any(|k| k.admits(value))
        {
            return Err((String::new(), must_be(kinds)));
        }
        if let (Some(items), Value::Array(values)) = (&self.items, value) {
            for (i, item) in values.iter().enumerate() {
                if !items.iter().any(|k| k.admits(item)) {
                    return Err((format!("[{i}]"), must_be(items)));
                }
            }
        }
        Ok(())
    }
}

fn must_be(kinds: &[Kind]) -> String {
    let mut phrases: Vec<&str> = Vec::with_capacity(kinds.len());
    for kind in kinds {
        // An integer is a number too: "a number" says it all.
        if *kind == Kind::Integer && kinds.contains(&Kind::Number) {
            continue;
        }
        phrases.push(kind.phrase());
    }
    format!("must be {}", phrases.join(" or "))
}

/// The fields of a request body type, by name, as its schema describes them.
#[derive(Debug, Clone, Default)]
pub struct BodySpec {
    pub fields: BTreeMap<String, FieldSpec>,
}

/// What `build` makes for the type `K`, made once per process: the schemas a
/// decoder reads are fixed at compile time, so a request never rebuilds them.
pub fn memo<K: 'static, V: Send + Sync + 'static>(build: impl FnOnce() -> V) -> Arc<V> {
    type Cache = Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    let key = TypeId::of::<(K, V)>();
    let found = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&key)
        .cloned();
    if let Some(value) = found.and_then(|v| v.downcast::<V>().ok()) {
        return value;
    }
    let value = Arc::new(build());
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(key, value.clone());
    value
}

impl BodySpec {
    /// The spec of `T`, read from its schema once per process.
    pub fn of<T: ToSchema + 'static>() -> Arc<Self> {
        memo::<T, Self>(Self::read::<T>)
    }

    fn read<T: ToSchema>() -> Self {
        let mut components = Vec::new();
        T::schemas(&mut components);
        let reader = Reader {
            components: &components,
        };
        let mut spec = BodySpec::default();
        reader.collect(&T::schema(), &mut spec, 0);
        spec
    }
}

struct Reader<'a> {
    components: &'a [(String, RefOr<Schema>)],
}

/// Deep enough for any body here; a guard against a schema that refers to itself.
const MAX_DEPTH: usize = 8;

impl Reader<'_> {
    fn resolve<'s>(&'s self, schema: &'s RefOr<Schema>, depth: usize) -> Option<&'s Schema> {
        match schema {
            RefOr::T(schema) => Some(schema),
            RefOr::Ref(reference) if depth < MAX_DEPTH => {
                let name = reference.ref_location.rsplit('/').next()?;
                let (_, found) = self.components.iter().find(|(n, _)| n == name)?;
                self.resolve(found, depth + 1)
            }
            RefOr::Ref(_) => None,
        }
    }

    /// The properties of an object schema (through `allOf`, as `#[serde(flatten)]` makes).
    fn collect(&self, schema: &RefOr<Schema>, spec: &mut BodySpec, depth: usize) {
        match self.resolve(schema, depth) {
            Some(Schema::Object(object)) => {
                for (name, property) in &object.properties {
                    spec.fields
                        .insert(name.clone(), self.field(property, depth + 1));
                }
            }
            Some(Schema::AllOf(all)) if depth < MAX_DEPTH => {
                for part in &all.items {
                    self.collect(part, spec, depth + 1);
                }
            }
            _ => {}
        }
    }

    fn field(&self, schema: &RefOr<Schema>, depth: usize) -> FieldSpec {
        let kinds = self.kinds(schema, depth);
        let items = match self.resolve(schema, depth) {
            Some(Schema::Array(array)) => match &array.items {
                ArrayItems::RefOrSchema(items) => self.kinds(items, depth + 1),
                ArrayItems::False => None,
            },
            _ => None,
        };
        FieldSpec { kinds, items }
    }

    fn kinds(&self, schema: &RefOr<Schema>, depth: usize) -> Option<Vec<Kind>> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.resolve(schema, depth)? {
            Schema::Object(object) => types(&object.schema_type),
            Schema::Array(array) => types(&array.schema_type),
            Schema::OneOf(one) => {
                let mut all = Vec::new();
                for item in &one.items {
                    all.extend(self.kinds(item, depth + 1)?);
                }
                Some(all)
            }
            Schema::AllOf(_) | Schema::AnyOf(_) => None,
            _ => None,
        }
    }
}

fn types(schema_type: &SchemaType) -> Option<Vec<Kind>> {
    match schema_type {
        SchemaType::Type(t) => Some(vec![Kind::of_type(t)]),
        SchemaType::Array(ts) => Some(ts.iter().map(Kind::of_type).collect()),
        SchemaType::AnyValue => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[allow(dead_code)]
    #[derive(utoipa::ToSchema, serde::Deserialize)]
    struct Inner {
        note: Option<String>,
        tags: Vec<String>,
    }

    #[allow(dead_code)]
    #[derive(utoipa::ToSchema)]
    struct Outer {
        count: i32,
        ratio: f64,
        on: bool,
        #[schema(inline)]
        inner: Inner,
        #[schema(value_type = Object)]
        settings: serde_json::Map<String, Value>,
    }

    #[allow(dead_code)]
    #[derive(utoipa::ToSchema, serde::Deserialize)]
    struct Flattened {
        name: String,
        #[serde(flatten)]
        inner: Inner,
    }

    #[test]
    fn a_schema_names_each_field_and_its_json_types() {
        let spec = BodySpec::of::<Outer>();
        let names: Vec<&str> = spec.fields.keys().map(String::as_str).collect();
        assert_eq!(names, ["count", "inner", "on", "ratio", "settings"]);
        let count = &spec.fields["count"];
        assert!(count.check(&json!(3)).is_ok());
        assert_eq!(
            count.check(&json!(3.5)).unwrap_err().1,
            "must be a whole number"
        );
        assert!(spec.fields["ratio"].check(&json!(3)).is_ok());
        assert!(spec.fields["on"].check(&json!("yes")).is_err());
        assert!(spec.fields["settings"].check(&json!({"a": 1})).is_ok());
        assert!(spec.fields["settings"].check(&json!([1])).is_err());
    }

    #[test]
    fn a_spec_is_read_once_per_type() {
        let first = BodySpec::of::<Outer>();
        assert!(Arc::ptr_eq(&first, &BodySpec::of::<Outer>()));
        assert!(!Arc::ptr_eq(&first, &BodySpec::of::<Flattened>()));
    }

    #[test]
    fn flattened_fields_are_fields_and_arrays_check_their_items() {
        let spec = BodySpec::of::<Flattened>();
        let names: Vec<&str> = spec.fields.keys().map(String::as_str).collect();
        assert_eq!(names, ["name", "note", "tags"]);
        assert!(spec.fields["note"].check(&Value::Null).is_ok());
        assert_eq!(
            spec.fields["note"].check(&json!(5)).unwrap_err().1,
            "must be a string or null"
        );
        assert_eq!(
            spec.fields["tags"].check(&json!(["a", 2])).unwrap_err(),
            ("[1]".to_string(), "must be a string".to_string())
        );
    }
}
