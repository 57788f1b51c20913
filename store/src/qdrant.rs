//! The vector store on a Qdrant server, through `qdrant-client` (gRPC), for deployments
//! that outgrow the embedded store. Same payload, same access rule inside every search
//! filter, same point ids as the embedded store. Requests are built by the pure functions
//! below (their tests pin what is sent); the client is async and runs on a
//! [`Bridge`](crate::bridge::Bridge).

use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePoints,
    DeletePointsBuilder, Distance, FieldType, Filter, PointStruct, PointsIdsList, Range,
    SearchParamsBuilder, SearchPoints, SearchPointsBuilder, UpsertPoints, UpsertPointsBuilder,
    VectorParamsBuilder,
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
    /// Connects to `url` and makes sure `collection` exists (cosine, `dimensions`) with the
    /// payload indexes the filters use.
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
                if client.collection_exists(&name).await? {
                    return Ok(());
                }
                client
                    .create_collection(CreateCollectionBuilder::new(&name).vectors_config(
                        VectorParamsBuilder::new(dimensions as u64, Distance::Cosine),
                    ))
                    .await?;
                for field in KEYWORD_FIELDS {
                    client
                        .create_field_index(CreateFieldIndexCollectionBuilder::new(
                            &name,
                            *field,
                            FieldType::Keyword,
                        ))
                        .await?;
                }
                client
                    .create_field_index(CreateFieldIndexCollectionBuilder::new(
                        &name,
                        "created_ms",
                        FieldType::Integer,
                    ))
                    .await?;
                Ok::<(), qdrant_client::QdrantError>(())
            })
            .map_err(|_| backend("Qdrant client thread ended"))?
            .map_err(backend)?;
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
