//! `mst/*` and `firehose/commit-proof-fixtures.json`: key heights, common prefixes, tree
//! roots, covering proofs, and inversion from the proof blocks alone.

mod common;

use std::collections::BTreeSet;

use atproto::car::BlockMap;
use atproto::commit::{invert_ops, Commit};
use atproto::frame::RepoOp;
use atproto::mst::{common_prefix_len, key_height, Mst, NoBlocks};
use atproto::Cid;

fn cid(s: &serde_json::Value) -> Cid {
    Cid::try_from(s.as_str().expect("CID string")).expect("CID")
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

#[test]
fn key_heights() {
    let cases = common::read_json("mst/key_heights.json");
    for c in cases.as_array().expect("array") {
        let key = c["key"].as_str().expect("key");
        assert_eq!(
            u64::from(key_height(key.as_bytes())),
            c["height"].as_u64().expect("height"),
            "{key}"
        );
    }
}

#[test]
fn common_prefixes() {
    let cases = common::read_json("mst/common_prefix.json");
    for c in cases.as_array().expect("array") {
        let (l, r) = (
            c["left"].as_str().expect("left"),
            c["right"].as_str().expect("right"),
        );
        assert_eq!(
            common_prefix_len(l.as_bytes(), r.as_bytes()) as u64,
            c["len"].as_u64().expect("len"),
            "{l} / {r}"
        );
    }
}

#[test]
fn commit_proofs_build_prove_and_invert() {
    let cases = common::read_json("firehose/commit-proof-fixtures.json");
    let cases = cases.as_array().expect("array");
    assert!(cases.len() >= 6);
    for c in cases {
        let name = c["comment"].as_str().expect("comment");
        let leaf = cid(&c["leafValue"]);
        let keys = strings(&c["keys"]);
        let adds = strings(&c["adds"]);
        let dels = strings(&c["dels"]);

        let mut tree = Mst::new();
        for k in &keys {
            tree.insert(k.as_bytes(), leaf, &NoBlocks).expect("insert");
        }
        assert_eq!(
            tree.root_cid().expect("root"),
            cid(&c["rootBeforeCommit"]),
            "{name}: root before"
        );

        for k in &adds {
            tree.insert(k.as_bytes(), leaf, &NoBlocks).expect("add");
        }
        for k in &dels {
            assert!(
                tree.remove(k.as_bytes(), &NoBlocks).expect("del").is_some(),
                "{name}: {k} present"
            );
        }
        let after = tree.root_cid().expect("root");
        assert_eq!(after, cid(&c["rootAfterCommit"]), "{name}: root after");

        // The proof a writer sends: covering proofs of every op's key, in the new tree.
        let mut proof = BTreeSet::new();
        for k in adds.iter().chain(&dels) {
            proof.extend(tree.covering_proof(k.as_bytes(), &NoBlocks).expect("proof"));
        }
        let want: BTreeSet<Cid> = c["blocksInProof"]
            .as_array()
            .expect("array")
            .iter()
            .map(cid)
            .collect();
        assert_eq!(proof, want, "{name}: blocks in proof");

        // Invert with only the proof blocks.
        let (_, all_blocks) = tree.new_blocks().expect("blocks");
        let proof_blocks: BlockMap = all_blocks
            .into_iter()
            .filter(|(c, _)| want.contains(c))
            .collect();
        let commit = Commit {
            did: "did:example:fixture".into(),
            version: 3,
            data: after,
            rev: "3kznmn7xqxl22".into(),
            prev: None,
            sig: vec![],
        };
        let ops: Vec<RepoOp> = adds
            .iter()
            .map(|k| RepoOp {
                action: "create".into(),
                path: k.clone(),
                cid: Some(leaf),
                prev: None,
            })
            .chain(dels.iter().map(|k| RepoOp {
                action: "delete".into(),
                path: k.clone(),
                cid: None,
                prev: Some(leaf),
            }))
            .collect();
        let before =
            invert_ops(&commit, &ops, &proof_blocks).expect("inverts from the proof alone");
        assert_eq!(before, cid(&c["rootBeforeCommit"]), "{name}: inverted root");

        // With a proof block withheld, inversion either fails or (when that neighbour was
        // not needed) still finds the true root: it never guesses. The new root is always
        // needed.
        for missing in &want {
            let mut fewer = proof_blocks.clone();
            fewer.remove(missing);
            if let Ok(root) = invert_ops(&commit, &ops, &fewer) {
                assert_eq!(
                    root,
                    cid(&c["rootBeforeCommit"]),
                    "{name}: without {missing}"
                );
            }
        }
        let mut no_root = proof_blocks.clone();
        no_root.remove(&after);
        assert!(
            invert_ops(&commit, &ops, &no_root).is_err(),
            "{name}: inverted without the root"
        );
    }
}
