//! Sentence embeddings for recall: an ONNX model directory (like
//! `../shared/models/all-minilm-l6-v2`) run by fastembed over ONNX Runtime, loaded
//! dynamically from `ORT_DYLIB_PATH` (`infra/onnxruntime/setup.sh` provides it from the PyPI
//! wheel), and a batcher that groups requests by size and wait time so the model runs on
//! full batches while callers await single texts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Why embedding failed.
#[derive(Debug, Error)]
pub enum EmbedError {
    /// A model file is missing or unreadable.
    #[error("model file {0}: {1}")]
    ModelFile(PathBuf, String),
    /// ONNX Runtime's library is not where `ORT_DYLIB_PATH` says.
    #[error("ONNX Runtime library not found (set ORT_DYLIB_PATH, e.g. $(infra/onnxruntime/setup.sh)): {0}")]
    Runtime(String),
    /// The model failed to load or run.
    #[error("embedding model: {0}")]
    Model(String),
    /// The batcher stopped.
    #[error("embedder stopped")]
    Stopped,
}

/// Which graph of the model directory to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `model.onnx`.
    Fp32,
    /// `model_int8.onnx` (about 3x faster on CPU, cosine ≥ 0.97 to fp32).
    Int8,
}

/// Tokens per text; longer texts are truncated (the model was trained at 256).
pub const MAX_TOKENS: usize = 256;

/// ONNX Runtime's library must be where `ORT_DYLIB_PATH` says before a model loads.
fn check_runtime() -> Result<(), EmbedError> {
    let ort = std::env::var("ORT_DYLIB_PATH")
        .map_err(|_| EmbedError::Runtime("ORT_DYLIB_PATH is not set".into()))?;
    if !Path::new(&ort).is_file() {
        return Err(EmbedError::Runtime(ort));
    }
    Ok(())
}

/// A loaded model.
pub struct Embedder {
    model: TextEmbedding,
    dimensions: usize,
}

impl Embedder {
    /// Loads the model in `dir` (tokenizer files and the graph for `precision`).
    pub fn load(
        dir: &Path,
        precision: Precision,
        threads: Option<usize>,
    ) -> Result<Embedder, EmbedError> {
        check_runtime()?;
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| EmbedError::ModelFile(path, e.to_string()))
        };
        let graph = match precision {
            Precision::Fp32 => "model.onnx",
            Precision::Int8 => "model_int8.onnx",
        };
        let files = TokenizerFiles {
            tokenizer_file: read("tokenizer.json")?,
            config_file: read("config.json")?,
            special_tokens_map_file: read("special_tokens_map.json")?,
            tokenizer_config_file: read("tokenizer_config.json")?,
        };
        let user_model =
            UserDefinedEmbeddingModel::new(read(graph)?, files).with_pooling(Pooling::Mean);
        let mut options = InitOptionsUserDefined::new().with_max_length(MAX_TOKENS);
        options.intra_threads = threads;
        let model = TextEmbedding::try_new_from_user_defined(user_model, options)
            .map_err(|e| EmbedError::Model(e.to_string()))?;
        Embedder::probe(model)
    }

    /// Loads a model by its fastembed name (e.g. `AllMiniLML6V2`), downloading it into
    /// `cache` on first use; needs the network once.
    pub fn load_named(name: &str, cache: &Path) -> Result<Embedder, EmbedError> {
        check_runtime()?;
        let model: fastembed::EmbeddingModel = name.parse().map_err(EmbedError::Model)?;
        let options = fastembed::TextInitOptions::new(model)
            .with_max_length(MAX_TOKENS)
            .with_cache_dir(cache.to_path_buf())
            .with_show_download_progress(false);
        let model = TextEmbedding::try_new(options).map_err(|e| {
            EmbedError::Model(format!(
                "{name}: {e} (offline? point --model-dir at a model directory instead)"
            ))
        })?;
        Embedder::probe(model)
    }

    fn probe(mut model: TextEmbedding) -> Result<Embedder, EmbedError> {
        let probe = model
            .embed(["dimension probe"], None)
            .map_err(|e| EmbedError::Model(e.to_string()))?;
        let dimensions = probe.first().map(Vec::len).unwrap_or(0);
        Ok(Embedder { model, dimensions })
    }

    /// The fastembed model underneath, for callers that need its raw session outputs or
    /// its tokenizer (the benchmarks compare against them).
    pub fn fastembed(&mut self) -> &mut TextEmbedding {
        &mut self.model
    }

    /// Vector length.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Embeds texts (L2-normalised), in one or more batches of `batch`.
    pub fn embed(&mut self, texts: &[String], batch: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = self
            .model
            .embed(texts, Some(batch.max(1)))
            .map_err(|e| EmbedError::Model(e.to_string()))?;
        for v in &mut out {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        Ok(out)
    }
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most texts run together.
    pub max_batch: usize,
    /// Longest a text waits for others to fill its batch.
    pub max_wait: Duration,
}

type Request = (String, oneshot::Sender<Result<Vec<f32>, String>>);

/// A handle that embeds one text at a time while the model runs whole batches.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Request>,
}

impl Batcher {
    /// Runs `embedder` on its own thread. The thread ends when every handle is dropped;
    /// its result (an error if the model failed) comes back through the join handle.
    pub fn start(
        mut embedder: Embedder,
        config: BatchConfig,
    ) -> (Batcher, std::thread::JoinHandle<()>) {
        // Room for a few batches in flight; a full queue makes callers wait.
        let (tx, mut rx) = mpsc::channel::<Request>(config.max_batch.max(1) * 4);
        let thread = std::thread::spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let deadline = std::time::Instant::now() + config.max_wait;
                let mut batch = vec![first];
                while batch.len() < config.max_batch {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(mpsc::error::TryRecvError::Empty)
                            if std::time::Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err(_) => break,
                    }
                }
                let texts: Vec<String> = batch.iter().map(|(t, _)| t.clone()).collect();
                match embedder.embed(&texts, texts.len()) {
                    Ok(vectors) => {
                        for ((_, reply), v) in batch.into_iter().zip(vectors) {
                            let _ = reply.send(Ok(v));
                        }
                    }
                    Err(e) => {
                        for (_, reply) in batch {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        (Batcher { tx }, thread)
    }

    /// Embeds one text.
    pub async fn embed(&self, text: String) -> Result<Vec<f32>, EmbedError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((text, reply))
            .await
            .map_err(|_| EmbedError::Stopped)?;
        rx.await
            .map_err(|_| EmbedError::Stopped)?
            .map_err(EmbedError::Model)
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}
