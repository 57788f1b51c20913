//! The vector store behind recall: a trait with one test suite for every backend, and the
//! embedded default on qdrant-edge. Access control lives in the store query itself: every
//! search carries the caller, and only points it may see can match (`public`, or the caller
//! is the author or a recipient).

use std::path::Path;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a vector store operation failed.
#[derive(Debug, Error)]
pub enum VectorError {
    /// The backend reported an error.
    #[error("vector store: {0}")]
    Backend(String),
    /// A vector has the wrong length.
    #[error("vector of {got} dimensions, store holds {want}")]
    Dimensions {
        /// Length given.
        got: usize,
        /// Length the store holds.
        want: usize,
    },
}

/// One indexed record's vector with the payload recall filters on.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorPoint {
    /// The record's AT-URI (its identity: upserting the same URI replaces it).
    pub uri: String,
    /// The repo it is in.
    pub author: String,
    /// Its record type.
    pub collection: String,
    /// `public` or `shared`.
    pub visibility: String,
    /// For shared records, who may see it.
    pub recipients: Vec<String>,
    /// `createdAt`, milliseconds since the epoch.
    pub created_ms: i64,
    /// The embedding.
    pub vector: Vec<f32>,
}

impl VectorPoint {
    /// The payload every backend stores with the vector (what searches filter on, and the
    /// URI they answer with).
    pub fn payload(&self) -> serde_json::Value {
        serde_json::json!({
            "uri": self.uri,
            "author": self.author,
            "collection": self.collection,
            "visibility": self.visibility,
            "recipients": self.recipients,
            "created_ms": self.created_ms,
        })
    }
}

/// Payload fields with a keyword index (every filter uses them); `created_ms` has an
/// integer index.
pub const KEYWORD_FIELDS: &[&str] = &["author", "collection", "visibility", "recipients"];

/// The HNSW beam for a search of `limit` results: wider than the default, because
/// filtered searches over recall-sized sets lose neighbours at small ef (measured in
/// benches/indexer.rs).
pub fn search_beam(limit: usize) -> usize {
    (limit * 16).clamp(128, 1024)
}

/// A recall query.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The query embedding.
    pub vector: Vec<f32>,
    /// Most results.
    pub limit: usize,
    /// Only this author's records.
    pub author: Option<String>,
    /// Only this record type.
    pub collection: Option<String>,
    /// Only records created at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
}

/// One result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The record's AT-URI.
    pub uri: String,
    /// Cosine similarity.
    pub score: f32,
}

/// A vector store. Every backend passes the same test suite.
pub trait VectorStore: Send + Sync {
    /// Inserts or replaces points (by URI).
    fn upsert(&self, points: &[VectorPoint]) -> Result<(), VectorError>;
    /// Removes points by URI (absent ones are ignored).
    fn delete(&self, uris: &[String]) -> Result<(), VectorError>;
    /// The nearest points `caller` may see (`None`: anonymous, public only).
    fn search(&self, caller: Option<&str>, query: &Query) -> Result<Vec<Hit>, VectorError>;
    /// Builds search indexes over what was written (slow; schedule it).
    fn optimize(&self) -> Result<(), VectorError>;
}

/// A stable point id for a URI: the first 8 bytes of its SHA-256.
pub fn point_id(uri: &str) -> u64 {
    let d = Sha256::digest(uri.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The embedded store on qdrant-edge.
pub struct EdgeStore {
    shard: qdrant_edge::EdgeShard,
    dimensions: usize,
}

fn json_path(field: &str) -> Result<qdrant_edge::JsonPath, VectorError> {
    qdrant_edge::JsonPath::try_from(field)
        .map_err(|_| VectorError::Backend(format!("bad payload path {field}")))
}

fn backend(e: impl std::fmt::Display) -> VectorError {
    VectorError::Backend(e.to_string())
}

impl EdgeStore {
    /// Opens the store in `dir`, creating it (with payload indexes on the filtered fields)
    /// if it does not exist yet.
    pub fn open(dir: &Path, dimensions: usize) -> Result<Self, VectorError> {
        use qdrant_edge::{EdgeConfigBuilder, EdgeVectorParamsBuilder};
        std::fs::create_dir_all(dir).map_err(backend)?;
        let config = EdgeConfigBuilder::new()
            .vector(
                qdrant_edge::DEFAULT_VECTOR_NAME,
                EdgeVectorParamsBuilder::new(dimensions, qdrant_edge::Distance::Cosine).build(),
            )
            .build();
        let exists = dir.join("edge_config.json").is_file();
        let shard = if exists {
            qdrant_edge::EdgeShard::load(dir, Some(config)).map_err(backend)?
        } else {
            let shard = qdrant_edge::EdgeShard::new(dir, config).map_err(backend)?;
            let keywords = KEYWORD_FIELDS
                .iter()
                .map(|f| (*f, qdrant_edge::PayloadSchemaType::Keyword));
            for (field, schema) in
                keywords.chain([("created_ms", qdrant_edge::PayloadSchemaType::Integer)])
            {
                shard
                    .update(qdrant_edge::UpdateOperation::FieldIndexOperation(
                        qdrant_edge::FieldIndexOperations::CreateIndex(qdrant_edge::CreateIndex {
                            field_name: json_path(field)?,
                            field_schema: Some(qdrant_edge::PayloadFieldSchema::FieldType(schema)),
                        }),
                    ))
                    .map_err(backend)?;
            }
            shard
        };
        Ok(EdgeStore { shard, dimensions })
    }

    fn matches(field: &str, value: &str) -> Result<qdrant_edge::Condition, VectorError> {
        Ok(qdrant_edge::Condition::Field(
            qdrant_edge::FieldCondition::new_match(
                json_path(field)?,
                qdrant_edge::Match::from(value.to_string()),
            ),
        ))
    }
}

impl VectorStore for EdgeStore {
    fn upsert(&self, points: &[VectorPoint]) -> Result<(), VectorError> {
        let mut list = Vec::with_capacity(points.len());
        for p in points {
            if p.vector.len() != self.dimensions {
                return Err(VectorError::Dimensions {
                    got: p.vector.len(),
                    want: self.dimensions,
                });
            }
            let point = qdrant_edge::PointStruct::new(
                qdrant_edge::PointId::NumId(point_id(&p.uri)),
                p.vector.clone(),
                p.payload(),
            );
            list.push(point.into());
        }
        self.shard
            .update(qdrant_edge::UpdateOperation::PointOperation(
                qdrant_edge::PointOperations::UpsertPoints(
                    qdrant_edge::PointInsertOperations::PointsList(list),
                ),
            ))
            .map_err(backend)
    }

    fn delete(&self, uris: &[String]) -> Result<(), VectorError> {
        let ids = uris
            .iter()
            .map(|u| qdrant_edge::PointId::NumId(point_id(u)))
            .collect();
        self.shard
            .update(qdrant_edge::UpdateOperation::PointOperation(
                qdrant_edge::PointOperations::DeletePoints { ids },
            ))
            .map_err(backend)
    }

    fn search(&self, caller: Option<&str>, query: &Query) -> Result<Vec<Hit>, VectorError> {
        if query.vector.len() != self.dimensions {
            return Err(VectorError::Dimensions {
                got: query.vector.len(),
                want: self.dimensions,
            });
        }
        // Who may see what, as part of the query: public, or the caller is author or recipient.
        let mut should = vec![Self::matches("visibility", "public")?];
        if let Some(did) = caller {
            should.push(Self::matches("author", did)?);
            should.push(Self::matches("recipients", did)?);
        }
        let mut must = vec![qdrant_edge::Condition::Filter(qdrant_edge::Filter {
            should: Some(should),
            min_should: None,
            must: None,
            must_not: None,
        })];
        if let Some(a) = &query.author {
            must.push(Self::matches("author", a)?);
        }
        if let Some(c) = &query.collection {
            must.push(Self::matches("collection", c)?);
        }
        if let Some(since) = query.since_ms {
            must.push(qdrant_edge::Condition::Field(
                qdrant_edge::FieldCondition::new_range(
                    json_path("created_ms")?,
                    qdrant_edge::Range {
                        lt: None,
                        gt: None,
                        gte: Some((since as f64).into()),
                        lte: None,
                    },
                ),
            ));
        }
        let request = qdrant_edge::SearchRequest {
            query: qdrant_edge::QueryEnum::Nearest(qdrant_edge::NamedQuery::default_dense(
                query.vector.clone(),
            )),
            filter: Some(qdrant_edge::Filter {
                should: None,
                min_should: None,
                must: Some(must),
                must_not: None,
            }),
            params: Some(qdrant_edge::SearchParams {
                hnsw_ef: Some(search_beam(query.limit)),
                ..qdrant_edge::SearchParams::default()
            }),
            limit: query.limit.clamp(1, 1000),
            offset: 0,
            with_payload: Some(qdrant_edge::WithPayloadInterface::Bool(true)),
            with_vector: None,
            score_threshold: None,
        };
        let found = self.shard.search(request).map_err(backend)?;
        Ok(found
            .into_iter()
            .filter_map(|p| {
                let uri = p.payload.as_ref()?.0.get("uri")?.as_str()?.to_string();
                Some(Hit {
                    uri,
                    score: p.score,
                })
            })
            .collect())
    }

    fn optimize(&self) -> Result<(), VectorError> {
        self.shard.optimize().map(|_| ()).map_err(backend)
    }
}

/// An exact, in-memory store: every search scans every point. The reference the other
/// backends are measured against (recall@k), and enough for small deployments and tests.
#[derive(Debug, Default)]
pub struct ExactStore {
    points: std::sync::RwLock<std::collections::HashMap<String, VectorPoint>>,
}

impl ExactStore {
    /// An empty store.
    pub fn new() -> Self {
        ExactStore::default()
    }

    /// Whether `caller` may see `p`: the same rule the other backends put in their queries.
    fn visible(p: &VectorPoint, caller: Option<&str>) -> bool {
        p.visibility == "public"
            || caller.is_some_and(|c| p.author == c || p.recipients.iter().any(|r| r == c))
    }
}

impl VectorStore for ExactStore {
    fn upsert(&self, points: &[VectorPoint]) -> Result<(), VectorError> {
        let mut map = self.points.write().map_err(|_| backend("lock poisoned"))?;
        for p in points {
            map.insert(p.uri.clone(), p.clone());
        }
        Ok(())
    }

    fn delete(&self, uris: &[String]) -> Result<(), VectorError> {
        let mut map = self.points.write().map_err(|_| backend("lock poisoned"))?;
        for u in uris {
            map.remove(u);
        }
        Ok(())
    }

    fn search(&self, caller: Option<&str>, query: &Query) -> Result<Vec<Hit>, VectorError> {
        let map = self.points.read().map_err(|_| backend("lock poisoned"))?;
        let mut hits: Vec<Hit> = map
            .values()
            .filter(|p| Self::visible(p, caller))
            .filter(|p| query.author.as_ref().is_none_or(|a| &p.author == a))
            .filter(|p| query.collection.as_ref().is_none_or(|c| &p.collection == c))
            .filter(|p| query.since_ms.is_none_or(|s| p.created_ms >= s))
            .map(|p| Hit {
                uri: p.uri.clone(),
                score: crate::embed::cosine(&p.vector, &query.vector),
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(query.limit.clamp(1, 1000));
        Ok(hits)
    }

    fn optimize(&self) -> Result<(), VectorError> {
        Ok(())
    }
}
