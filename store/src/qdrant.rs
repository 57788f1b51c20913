//! The vector store on a Qdrant server, through `qdrant-client` (gRPC), for deployments
//! that outgrow the embedded store. Same payload, same access rule inside every search
//! filter, same point ids as the embedded store. Requests are built by the pure functions
//! below (their tests pin what is sent); the client is async and runs on a
//! [`Bridge`](crate::bridge::Bridge).

use qdrant_client::qdrant::{
    vectors_config, CollectionInfo, Condition, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeletePoints, DeletePointsBuilder, Distance, FieldType,
    Filter, PayloadSchemaType, PointStruct, PointsIdsList, Range, SearchParamsBuilder,
    SearchPoints, SearchPointsBuilder, UpsertPoints, UpsertPointsBuilder, VectorParamsBuilder,
};
use qdrant_client::{Payload, Qdrant};

use crate::bridge::Bridge;
use crate::vectors::{
    point_id, search_beam, Hit, Query, VectorError, VectorPoint, VectorStore, KEYWORD_FIELDS,
};

fn backend(e: impl std::fmt::Display) -> VectorError {
    VectorError::Backend(e.to_string())
}

/// A Qdrant collection as a [`VectorStore`].
pub struct QdrantStore {
    client: Qdrant,
    collection: String,
    dimensions: usize,
    bridge: Bridge,
}

impl QdrantStore {
    /// Connects to `url` and makes sure `collection` is usable: created if missing (cosine,
    /// `dimensions`; another process creating it at the same moment is fine), an existing one
    /// checked against the model's size and distance (a clear error if they differ), and any
    /// payload index the filters use added where it is missing.
    pub fn connect(
        url: &str,
        api_key: &str,
        collection: &str,
        dimensions: usize,
    ) -> Result<Self, VectorError> {
        let mut config = Qdrant::from_url(url);
        if !api_key.is_empty() {
            config = config.api_key(api_key.to_string());
        }
        let client = config.build().map_err(backend)?;
        let bridge = Bridge::start("qdrant-client").map_err(backend)?;
        let store = QdrantStore {
            client,
            collection: collection.to_string(),
            dimensions,
            bridge,
        };
        let (client, name) = (store.client.clone(), store.collection.clone());
        store
            .bridge
            .run(async move {
                if !client.collection_exists(&name).await.map_err(backend)? {
                    let created = client
                        .create_collection(CreateCollectionBuilder::new(&name).vectors_config(
                            VectorParamsBuilder::new(dimensions as u64, Distance::Cosine),
                        ))
                        .await;
                    match created {
                        Err(e) if !already_exists(&e) => return Err(backend(e)),
                        // Created here, or by another indexer or appview meanwhile: either
                        // way it is checked like any existing collection.
                        _ => {}
                    }
                }
                let info = client
                    .collection_info(&name)
                    .await
                    .map_err(backend)?
                    .result
                    .ok_or_else(|| backend(format!("Qdrant sent no info on collection {name}")))?;
                for (field, kind) in missing_indexes(&name, &info, dimensions)? {
                    let made = client
                        .create_field_index(
                            CreateFieldIndexCollectionBuilder::new(&name, field, kind).wait(true),
                        )
                        .await;
                    match made {
                        Err(e) if !already_exists(&e) => return Err(backend(e)),
                        _ => tracing::info!(collection = %name, field, "added a payload index"),
                    }
                }
                Ok(())
            })
            .map_err(|_| backend("Qdrant client thread ended"))??;
        Ok(store)
    }

    fn check(&self, len: usize) -> Result<(), VectorError> {
        if len != self.dimensions {
            return Err(VectorError::Dimensions {
                got: len,
                want: self.dimensions,
            });
        }
        Ok(())
    }
}

/// Whether Qdrant refused a create because the thing exists (gRPC `ALREADY_EXISTS`, or the
/// message older servers send with another code).
fn already_exists(e: &qdrant_client::QdrantError) -> bool {
    const ALREADY_EXISTS: i32 = 6;
    match e {
        qdrant_client::QdrantError::ResponseError { status } => {
            status.code() as i32 == ALREADY_EXISTS
                || status
                    .message()
                    .to_ascii_lowercase()
                    .contains("already exists")
        }
        _ => false,
    }
}

/// The payload indexes recall's filters need: the keyword fields and the creation time.
pub fn payload_indexes() -> impl Iterator<Item = (&'static str, FieldType)> {
    KEYWORD_FIELDS
        .iter()
        .map(|f| (*f, FieldType::Keyword))
        .chain([("created_ms", FieldType::Integer)])
}

/// The schema type Qdrant reports for an index made as `kind`.
fn schema_type(kind: FieldType) -> PayloadSchemaType {
    match kind {
        FieldType::Keyword => PayloadSchemaType::Keyword,
        FieldType::Integer => PayloadSchemaType::Integer,
        FieldType::Float => PayloadSchemaType::Float,
        FieldType::Geo => PayloadSchemaType::Geo,
        FieldType::Text => PayloadSchemaType::Text,
        FieldType::Bool => PayloadSchemaType::Bool,
        FieldType::Datetime => PayloadSchemaType::Datetime,
        FieldType::Uuid => PayloadSchemaType::Uuid,
    }
}

/// Checks an existing collection against what agentnet writes (one unnamed vector of
/// `dimensions`, cosine distance; the payload indexes of [`payload_indexes`]) and returns
/// the indexes it lacks. A collection made for another model, or with a field indexed as
/// another type, is refused with what differs, rather than accepted and every recall failing.
pub fn missing_indexes(
    name: &str,
    info: &CollectionInfo,
    dimensions: usize,
) -> Result<Vec<(&'static str, FieldType)>, VectorError> {
    let refuse = |why: String| {
        Err(VectorError::Backend(format!(
            "Qdrant collection {name} {why}; agentnet needs one unnamed vector of {dimensions} \
             dimensions with cosine distance (choose another collection with \
             --qdrant-collection, or a model of that size)"
        )))
    };
    let vectors = info
        .config
        .as_ref()
        .and_then(|c| c.params.as_ref())
        .and_then(|p| p.vectors_config.as_ref())
        .and_then(|v| v.config.as_ref());
    match vectors {
        Some(vectors_config::Config::Params(p)) => {
            let distance = Distance::try_from(p.distance).unwrap_or(Distance::UnknownDistance);
            if p.size != dimensions as u64 || distance != Distance::Cosine {
                return refuse(format!(
                    "holds vectors of {} dimensions with {} distance",
                    p.size,
                    distance.as_str_name()
                ));
            }
        }
        Some(vectors_config::Config::ParamsMap(_)) => {
            return refuse("holds named vectors".to_string())
        }
        None => return refuse("reports no vector configuration".to_string()),
    }
    let mut missing = Vec::new();
    for (field, kind) in payload_indexes() {
        match info.payload_schema.get(field) {
            None => missing.push((field, kind)),
            Some(have) if have.data_type == schema_type(kind) as i32 => {}
            Some(have) => {
                let have = PayloadSchemaType::try_from(have.data_type)
                    .map(|t| t.as_str_name())
                    .unwrap_or("an unknown type");
                return Err(VectorError::Backend(format!(
                    "Qdrant collection {name} indexes payload field {field} as {have}; \
                     recall filters it as {}",
                    schema_type(kind).as_str_name()
                )));
            }
        }
    }
    Ok(missing)
}

/// The upsert for `points` (ids from the URI, payload as the embedded store's).
pub fn upsert_request(
    collection: &str,
    points: &[VectorPoint],
) -> Result<UpsertPoints, VectorError> {
    let mut list = Vec::with_capacity(points.len());
    for p in points {
        let payload = Payload::try_from(p.payload()).map_err(backend)?;
        list.push(PointStruct::new(
            point_id(&p.uri),
            p.vector.clone(),
            payload,
        ));
    }
    Ok(UpsertPointsBuilder::new(collection, list)
        .wait(true)
        .build())
}

/// The delete for `uris`.
pub fn delete_request(collection: &str, uris: &[String]) -> DeletePoints {
    DeletePointsBuilder::new(collection)
        .points(PointsIdsList {
            ids: uris.iter().map(|u| point_id(u).into()).collect(),
        })
        .wait(true)
        .build()
}

/// The filter for `caller`'s search: who may see what (public, or the caller is author or
/// recipient), then the query's own conditions.
pub fn filter(caller: Option<&str>, query: &Query) -> Filter {
    let mut may_see = vec![Condition::matches("visibility", "public".to_string())];
    if let Some(did) = caller {
        may_see.push(Condition::matches("author", did.to_string()));
        may_see.push(Condition::matches("recipients", did.to_string()));
    }
    let mut must: Vec<Condition> = vec![Filter::should(may_see).into()];
    if let Some(a) = &query.author {
        must.push(Condition::matches("author", a.clone()));
    }
    if let Some(c) = &query.collection {
        must.push(Condition::matches("collection", c.clone()));
    }
    if let Some(since) = query.since_ms {
        must.push(Condition::range(
            "created_ms",
            Range {
                gte: Some(since as f64),
                ..Default::default()
            },
        ));
    }
    Filter::must(must)
}

/// The search for `caller`: the query vector, the filter, a beam as wide as the embedded
/// store's.
pub fn search_request(collection: &str, caller: Option<&str>, query: &Query) -> SearchPoints {
    let limit = query.limit.clamp(1, 1000);
    SearchPointsBuilder::new(collection, query.vector.clone(), limit as u64)
        .filter(filter(caller, query))
        .with_payload(true)
        .params(SearchParamsBuilder::default().hnsw_ef(search_beam(limit) as u64))
        .build()
}

impl VectorStore for QdrantStore {
    fn upsert(&self, points: &[VectorPoint]) -> Result<(), VectorError> {
        for p in points {
            self.check(p.vector.len())?;
        }
        let request = upsert_request(&self.collection, points)?;
        let client = self.client.clone();
        self.bridge
            .run(async move { client.upsert_points(request).await })
            .map_err(|_| backend("Qdrant client thread ended"))?
            .map(|_| ())
            .map_err(backend)
    }

    fn delete(&self, uris: &[String]) -> Result<(), VectorError> {
        let request = delete_request(&self.collection, uris);
        let client = self.client.clone();
        self.bridge
            .run(async move { client.delete_points(request).await })
            .map_err(|_| backend("Qdrant client thread ended"))?
            .map(|_| ())
            .map_err(backend)
    }

    fn search(&self, caller: Option<&str>, query: &Query) -> Result<Vec<Hit>, VectorError> {
        self.check(query.vector.len())?;
        let request = search_request(&self.collection, caller, query);
        let client = self.client.clone();
        let found = self
            .bridge
            .run(async move { client.search_points(request).await })
            .map_err(|_| backend("Qdrant client thread ended"))?
            .map_err(backend)?;
        Ok(found
            .result
            .into_iter()
            .filter_map(|p| {
                let uri = match p.payload.get("uri")?.kind.as_ref()? {
                    qdrant_client::qdrant::value::Kind::StringValue(s) => s.clone(),
                    _ => return None,
                };
                Some(Hit {
                    uri,
                    score: p.score,
                })
            })
            .collect())
    }

    fn optimize(&self) -> Result<(), VectorError> {
        // The server builds its indexes itself.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: tonic::Status) -> qdrant_client::QdrantError {
        qdrant_client::QdrantError::ResponseError { status }
    }

    #[test]
    fn a_create_that_lost_the_race_is_recognised() {
        // Two processes starting on a new collection: the second create is refused as existing.
        assert!(already_exists(&response(tonic::Status::already_exists(
            "Collection `agentnet` already exists!"
        ))));
        // Servers that answer with another code still say so in the message.
        assert!(already_exists(&response(tonic::Status::invalid_argument(
            "Wrong input: Collection `agentnet` already exists!"
        ))));
        // Anything else is a real failure.
        assert!(!already_exists(&response(tonic::Status::unavailable(
            "connection refused"
        ))));
        assert!(!already_exists(&response(tonic::Status::invalid_argument(
            "Wrong input: Vector dimension error"
        ))));
        assert!(!already_exists(
            &qdrant_client::QdrantError::ConversionError("already exists".into())
        ));
    }
}
