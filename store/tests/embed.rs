//! The embedding pipeline reproduces the model's reference embeddings (read in place from
//! ../shared/models or AGENTNET_MODEL_DIR), and the batcher gives the same vectors as a
//! direct batch. Needs ORT_DYLIB_PATH (scripts/test.sh sets it from infra/onnxruntime).

use std::path::PathBuf;
use std::time::Duration;

use store::embed::{cosine, BatchConfig, Batcher, Embedder, Precision};

fn model_dir() -> PathBuf {
    let dir = std::env::var("AGENTNET_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(
                std::env::var("CARGO_MANIFEST_DIR")
                    .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
            )
            .join("../../shared/models/all-minilm-l6-v2")
        });
    assert!(
        dir.join("reference_embeddings.json").is_file(),
        "embedding model not found at {}: put ../shared beside the checkout or set AGENTNET_MODEL_DIR",
        dir.display()
    );
    dir
}

fn reference() -> (Vec<String>, Vec<Vec<f32>>) {
    let text =
        std::fs::read_to_string(model_dir().join("reference_embeddings.json")).expect("reference");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let sentences = v["sentences"]
        .as_array()
        .expect("sentences")
        .iter()
        .map(|s| s.as_str().expect("str").to_string())
        .collect();
    let embeddings = v["embeddings"]
        .as_array()
        .expect("embeddings")
        .iter()
        .map(|e| {
            e.as_array()
                .expect("vector")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect()
        })
        .collect();
    (sentences, embeddings)
}

#[test]
fn reproduces_reference_embeddings_fp32_and_int8() {
    let (sentences, expected) = reference();
    assert!(sentences.len() >= 16);
    for (precision, floor) in [(Precision::Fp32, 0.999), (Precision::Int8, 0.97)] {
        let mut e = Embedder::load(&model_dir(), precision, Some(2)).expect("model loads");
        assert_eq!(e.dimensions(), 384);
        let got = e.embed(&sentences, 8).expect("embed");
        for (i, (g, want)) in got.iter().zip(&expected).enumerate() {
            let c = cosine(g, want);
            assert!(
                c >= floor,
                "{precision:?} sentence {i}: cosine {c} < {floor}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batcher_matches_direct_batches() {
    let (sentences, _) = reference();
    // fp32: int8 quantizes activations per batch, so its vectors shift slightly with the batch.
    let mut direct = Embedder::load(&model_dir(), Precision::Fp32, Some(2)).expect("model");
    let want = direct.embed(&sentences, 16).expect("embed");
    let (batcher, thread) = Batcher::start(
        Embedder::load(&model_dir(), Precision::Fp32, Some(2)).expect("model"),
        BatchConfig {
            max_batch: 8,
            max_wait: Duration::from_millis(5),
        },
    );
    let handles: Vec<_> = sentences
        .iter()
        .cloned()
        .map(|s| {
            let b = batcher.clone();
            tokio::spawn(async move { b.embed(s).await })
        })
        .collect();
    for (h, w) in handles.into_iter().zip(&want) {
        let got = h.await.expect("join").expect("embedded");
        assert!(cosine(&got, w) > 0.9999);
    }
    drop(batcher);
    thread.join().expect("batcher thread ends cleanly");
}

#[test]
fn an_unknown_model_name_is_a_clear_error() {
    std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH must name libonnxruntime");
    let cache = std::env::temp_dir().join(format!("agentnet-models-{}", std::process::id()));
    let err = Embedder::load_named("NoSuchModel", &cache)
        .err()
        .expect("not a fastembed model");
    assert!(err.to_string().contains("NoSuchModel"), "{err}");
}
