//! The record index suite, run by each transport's test binary (chDB, ClickHouse server):
//! extracted changes are written, every query answers each caller only what it may see,
//! replays do not duplicate, deletes apply, pages chain, threads and tasks join, and a
//! private record leaves no trace in any column.

use agentnet_indexer::extract::{AppviewKey, Extractor};
use atproto::commit::{RepoWriter, Write};
use atproto::crypto::{Algorithm, Keypair};
use atproto::envelope::{EncryptionKey, Recipient};
use serde_json::json;
use store::records::{Change, Page, RecordRow, RecordStore, SqlTransport, Visibility};

use super::{cbor, sealed_record};

const NOW: &str = "2026-11-24T08:00:00.000Z";
const APPVIEW: &str = "did:web:appview.agentnet.test";
const B: &str = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "did:plc:cccccccccccccccccccccccc";
const SECRET: &str = "private: the escrow code is 4242";

/// Runs every check against `store` (empty on entry).
pub fn run<T: SqlTransport>(store: &RecordStore<T>) {
    assert_eq!(
        store.applied().expect("versions"),
        (1..=19).collect::<Vec<u32>>()
    );
    backfill_progress(store);
    narrowed_by_subject(store);
    let mut repo = RepoWriter::new(
        "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
        Keypair::generate(Algorithm::K256),
    )
    .expect("repo");
    let a = repo.did().to_string();
    let (a_key, b_key, c_key, av_key) = (
        EncryptionKey::generate(),
        EncryptionKey::generate(),
        EncryptionKey::generate(),
        EncryptionKey::generate(),
    );
    let (a_pub, b_pub, c_pub, av_pub) = (
        a_key.public(),
        b_key.public(),
        c_key.public(),
        av_key.public(),
    );
    let sealed = |rkey: &str, inner: &serde_json::Value, to: &[Recipient<'_>]| {
        sealed_record(&a, rkey, NOW, inner, to)
    };
    let msg = |to: &str, text: &str| json!({"$type": "agent.comms.message", "sender": a, "recipient": to, "content": {"kind": "text", "text": text}, "createdAt": NOW});
    let req = json!({"$type": "agent.comms.request", "sender": a, "assignee": C, "task": "audit the ledger", "createdAt": NOW});
    let note = json!({"$type": "agent.memory.note", "text": SECRET, "createdAt": NOW});
    let writes = vec![
        Write::Create {
            collection: "agent.comms.message".into(),
            rkey: "3l3aaaaaaaaa2".into(),
            record: cbor(&msg(B, "public hello")),
        },
        Write::Create {
            collection: "agent.envelope.sealed".into(),
            rkey: "3l3aaaaaaaaa3".into(),
            record: sealed(
                "3l3aaaaaaaaa3",
                &msg(B, "shared hello"),
                &[
                    Recipient {
                        did: &a,
                        key: &a_pub,
                    },
                    Recipient {
                        did: B,
                        key: &b_pub,
                    },
                    Recipient {
                        did: APPVIEW,
                        key: &av_pub,
                    },
                ],
            ),
        },
        Write::Create {
            collection: "agent.envelope.sealed".into(),
            rkey: "3l3aaaaaaaaa4".into(),
            record: sealed(
                "3l3aaaaaaaaa4",
                &req,
                &[
                    Recipient {
                        did: &a,
                        key: &a_pub,
                    },
                    Recipient {
                        did: C,
                        key: &c_pub,
                    },
                ],
            ),
        },
        Write::Create {
            collection: "agent.envelope.sealed".into(),
            rkey: "3l3aaaaaaaaa5".into(),
            record: sealed(
                "3l3aaaaaaaaa5",
                &note,
                &[Recipient {
                    did: &a,
                    key: &a_pub,
                }],
            ),
        },
    ];
    let ev = repo.commit(&writes, NOW).expect("commit");
    let extractor = Extractor::new(
        lexicons::catalog().expect("catalog"),
        Some(AppviewKey {
            did: APPVIEW.into(),
            key: av_key,
        }),
    );
    let (changes, _) = extractor.extract(&ev);
    store.apply(&changes, 1).expect("apply");
    store
        .apply(&changes, 2)
        .expect("replaying a batch is harmless");

    let uris =
        |rows: Vec<store::records::RecordRow>| rows.into_iter().map(|r| r.rkey).collect::<Vec<_>>();
    let mut b_inbox = uris(
        store
            .inbox(Some(B), B, None, &Page::first(50))
            .expect("inbox")
            .rows,
    );
    b_inbox.sort();
    assert_eq!(
        b_inbox,
        vec!["3l3aaaaaaaaa2", "3l3aaaaaaaaa3"],
        "B: the public and the shared message, once each"
    );
    assert_eq!(
        uris(
            store
                .inbox(None, B, None, &Page::first(50))
                .expect("inbox")
                .rows
        ),
        vec!["3l3aaaaaaaaa2"],
        "anonymous: public only"
    );
    assert_eq!(
        uris(
            store
                .inbox(Some(C), B, None, &Page::first(50))
                .expect("inbox")
                .rows
        ),
        vec!["3l3aaaaaaaaa2"],
        "C cannot see what A shared with B"
    );
    assert_eq!(
        uris(
            store
                .inbox(Some(C), C, None, &Page::first(50))
                .expect("inbox")
                .rows
        ),
        vec!["3l3aaaaaaaaa4"],
        "C's request, sealed for C"
    );

    // The live inbox: the same rule, in index order, resumable after any (time, uri).
    let live = |who: &str, after: (i64, &str)| {
        uris(store.inbox_indexed(who, after, 50).expect("live inbox"))
    };
    let mut b_live = live(B, (0, ""));
    b_live.sort();
    assert_eq!(
        b_live,
        vec!["3l3aaaaaaaaa2", "3l3aaaaaaaaa3"],
        "B's live inbox"
    );
    assert_eq!(
        live(C, (0, "")),
        vec!["3l3aaaaaaaaa4"],
        "C's: its request only"
    );
    assert!(
        live(&a, (0, "")).is_empty(),
        "A's own records are not A's inbox"
    );
    assert!(
        live(B, (2, "at://~")).is_empty(),
        "nothing indexed after the replay's time"
    );
    let (latest, woken) = store.touched_since(0, 1000).expect("touched");
    assert_eq!(latest, 2, "the replay's time");
    let mut woken: Vec<String> = woken.into_iter().collect();
    woken.sort();
    assert_eq!(
        woken,
        vec![B.to_string(), C.to_string()],
        "whom the live inbox wakes"
    );
    assert!(store.touched_since(2, 1000).expect("touched").1.is_empty());
    let changes_seen = store.changes();
    store.apply(&[], 4).expect("empty batch");
    assert!(
        !changes_seen.has_changed().expect("signal"),
        "no write, no signal"
    );

    let shared_uri = format!("at://{a}/agent.envelope.sealed/3l3aaaaaaaaa3");
    assert!(store.get(Some(C), &shared_uri).expect("get").is_none());
    let for_b = store
        .get(Some(B), &shared_uri)
        .expect("get")
        .expect("B may see it");
    assert_eq!(for_b.text.as_deref(), Some("shared hello"));
    assert!(
        for_b.sealed.is_some(),
        "the envelope is kept for recipients to open"
    );

    assert!(
        !store.anywhere(SECRET).expect("scan"),
        "the private note's text is nowhere"
    );
    assert!(
        !store.anywhere("3l3aaaaaaaaa5").expect("scan"),
        "nor its URI"
    );
    assert!(
        store.anywhere("public hello").expect("scan"),
        "the scan does find stored text"
    );

    let del = repo
        .commit(
            &[Write::Delete {
                collection: "agent.comms.message".into(),
                rkey: "3l3aaaaaaaaa2".into(),
            }],
            NOW,
        )
        .expect("delete");
    let (changes, _) = extractor.extract(&del);
    assert!(matches!(changes.as_slice(), [Change::Delete { .. }]));
    store.apply(&changes, 3).expect("apply delete");
    assert!(
        changes_seen.has_changed().expect("signal"),
        "a write signals"
    );
    assert_eq!(
        uris(
            store
                .inbox(Some(B), B, None, &Page::first(50))
                .expect("inbox")
                .rows
        ),
        vec!["3l3aaaaaaaaa3"]
    );
    coordination(store, &mut repo, &extractor);
}

/// A backfill's per-account progress: the newest rev written for each account wins,
/// whatever order the rows arrive in.
/// A message from `author` to `to` (shared: sealed for both), created at second `at`.
fn addressed(author: &str, rkey: &str, to: &str, shared: bool, at: u32, rev: &str) -> RecordRow {
    let created_at = format!("2026-10-01T00:{:02}:{:02}.000Z", at / 60, at % 60);
    let collection = "agent.comms.message";
    RecordRow {
        uri: format!(
            "at://{author}/{}/{rkey}",
            if shared {
                "agent.envelope.sealed"
            } else {
                collection
            }
        ),
        cid: "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".into(),
        author: author.into(),
        collection: collection.into(),
        rkey: rkey.into(),
        rev: rev.into(),
        created_at: created_at.clone(),
        visibility: if shared {
            Visibility::Shared
        } else {
            Visibility::Public
        },
        recipients: if shared {
            vec![author.into(), to.into()]
        } else {
            vec![]
        },
        record: Some(
            json!({"$type": collection, "sender": author, "recipient": to,
            "content": {"kind": "text", "text": "hi"}, "createdAt": created_at}),
        ),
        sealed: shared.then(|| json!({"ciphertext": "…"})),
        text: Some("hi".into()),
        indexed_ms: 0,
    }
}

/// Inboxes find their records through the subject index, and still answer by the records
/// themselves: a record readdressed or deleted leaves its inbox, and a caller who may see
/// few of a subject's records pages through the rest in short pages without losing one.
/// Runs on its own accounts, before the rest of the suite, and leaves nothing behind.
fn narrowed_by_subject<T: SqlTransport>(store: &RecordStore<T>) {
    let (x, y, z, w) = (
        "did:plc:xxxxxxxxxxxxxxxxxxxxxxxx",
        "did:plc:yyyyyyyyyyyyyyyyyyyyyyyy",
        "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz",
        "did:plc:wwwwwwwwwwwwwwwwwwwwwwww",
    );
    let inbox = |caller: &str, of: &str, page: &Page| {
        store.inbox(Some(caller), of, None, page).expect("inbox")
    };
    let upsert = |rows: Vec<RecordRow>| {
        let changes: Vec<Change> = rows
            .into_iter()
            .map(|r| Change::Upsert(Box::new(r)))
            .collect();
        store.apply(&changes, 1).expect("write");
    };
    // Readdressed: first to Y, then (a newer rev) to W.
    upsert(vec![addressed(
        x,
        "3m2aaaaaaaaa2",
        y,
        false,
        1,
        "3m2aaaaaaaaa2",
    )]);
    assert_eq!(inbox(y, y, &Page::first(10)).rows.len(), 1);
    upsert(vec![addressed(
        x,
        "3m2aaaaaaaaa2",
        w,
        false,
        1,
        "3m2aaaaaaaaa3",
    )]);
    assert!(
        inbox(y, y, &Page::first(10)).rows.is_empty(),
        "a readdressed record leaves the old inbox"
    );
    assert_eq!(
        inbox(w, w, &Page::first(10)).rows.len(),
        1,
        "and joins the new one"
    );
    store
        .apply(
            &[Change::Delete {
                uri: format!("at://{x}/agent.comms.message/3m2aaaaaaaaa2"),
                rev: "3m2aaaaaaaaa4".into(),
            }],
            1,
        )
        .expect("delete");
    assert!(
        inbox(w, w, &Page::first(10)).rows.is_empty(),
        "a deleted record leaves it"
    );

    // Z's inbox: 3 public messages, older than 400 shared ones only X and Z may read.
    let mut rows: Vec<RecordRow> = (0..3)
        .map(|i| addressed(x, &format!("3m2bbbbbbbbb{i}"), z, false, i, "3m2bbbbbbbbb2"))
        .collect();
    rows.extend((0..400).map(|i| {
        let rkey = format!("3m2cccccc{i:04}");
        addressed(x, &rkey, z, true, 10 + i, &rkey)
    }));
    upsert(rows);
    assert_eq!(inbox(z, z, &Page::first(100)).rows.len(), 100);
    // Y sees only the public three: the first answer may be short, with a cursor to go on
    // from, and paging to the end yields each of the three once, newest first.
    let mut seen = Vec::new();
    let mut page = Page::first(2);
    let mut answers = 0;
    loop {
        let listing = inbox(y, z, &page);
        assert!(listing
            .rows
            .iter()
            .all(|r| r.visibility == Visibility::Public));
        seen.extend(listing.rows.into_iter().map(|r| r.rkey));
        answers += 1;
        assert!(answers < 50, "paging ends");
        match listing.cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec!["3m2bbbbbbbbb2", "3m2bbbbbbbbb1", "3m2bbbbbbbbb0"]
    );
    assert!(
        answers > 2,
        "the shared records took short pages ({answers} answers)"
    );
    // Leave nothing for the rest of the suite.
    for did in [x, y, z, w] {
        store.purge_author(did).expect("purge");
    }
    assert!(inbox(z, z, &Page::first(10)).rows.is_empty());
}

fn backfill_progress<T: SqlTransport>(store: &RecordStore<T>) {
    assert!(store.backfilled().expect("progress").is_empty());
    store.save_backfilled(B, "3l3bbbbbbbbb2", 4).expect("save");
    store.save_backfilled(C, "3l3cccccccc22", 1).expect("save");
    store.save_backfilled(B, "3l3bbbbbbbbb5", 6).expect("save");
    store
        .save_backfilled(B, "3l3bbbbbbbbb3", 5)
        .expect("save (older)");
    let done = store.backfilled().expect("progress");
    assert_eq!(done.len(), 2);
    assert_eq!(done[B], "3l3bbbbbbbbb5");
    assert_eq!(done[C], "3l3cccccccc22");
}

/// Threads, tasks, handoffs, broadcasts, agents and paging.
fn coordination<T: SqlTransport>(
    store: &RecordStore<T>,
    repo: &mut RepoWriter,
    extractor: &Extractor,
) {
    let a = repo.did().to_string();
    let at = |i: u32| format!("2026-11-24T09:00:{:02}.000Z", i);
    let mut writes = Vec::new();
    let mut add = |rkey: &str, v: serde_json::Value| {
        writes.push(Write::Create {
            collection: v["$type"].as_str().expect("$type").into(),
            rkey: rkey.into(),
            record: cbor(&v),
        })
    };
    // A request to B. A "response" in A's own repo claiming to be B's must not settle it;
    // B's answer does; C's (not the assignee) does not.
    let request = format!("at://{a}/agent.comms.request/3l3bbbbbbbbb2");
    add(
        "3l3bbbbbbbbb2",
        json!({"$type": "agent.comms.request", "sender": a, "assignee": B, "task": "index the logs", "createdAt": at(1)}),
    );
    add(
        "3l3bbbbbbbbb3",
        json!({"$type": "agent.comms.response", "sender": B, "request": request, "status": "partial", "createdAt": at(2)}),
    );
    add(
        "3l3bbbbbbbbb4",
        json!({"$type": "agent.comms.request", "sender": a, "assignee": C, "task": "still open", "createdAt": at(3)}),
    );
    // A thread of messages.
    add(
        "3l3bbbbbbbbb5",
        json!({"$type": "agent.comms.message", "sender": a, "recipient": B, "thread": "3l3ttttttttt2",
        "content": {"kind": "text", "text": "first"}, "createdAt": at(4)}),
    );
    add(
        "3l3bbbbbbbbb6",
        json!({"$type": "agent.comms.message", "sender": a, "recipient": B, "thread": "3l3ttttttttt2",
        "content": {"kind": "text", "text": "second"}, "createdAt": at(5)}),
    );
    add(
        "3l3bbbbbbbbb7",
        json!({"$type": "agent.comms.handoff", "from": a, "to": B, "session": "s1", "summary": "take over", "createdAt": at(6)}),
    );
    add(
        "3l3bbbbbbbbba",
        json!({"$type": "agent.comms.broadcast", "sender": a, "topic": "ops", "audience": ["role:oncall"],
        "content": {"kind": "text", "text": "maintenance"}, "createdAt": at(7)}),
    );
    add(
        "3l3bbbbbbbbbc",
        json!({"$type": "agent.comms.broadcast", "sender": a, "topic": "news",
        "content": {"kind": "text", "text": "hello"}, "createdAt": at(8)}),
    );
    let ev = repo.commit(&writes, NOW).expect("commit");
    let (changes, skipped) = extractor.extract(&ev);
    assert!(skipped.is_empty(), "{skipped:?}");
    store.apply(&changes, 10).expect("apply");

    // Responses are written by other repos: B's and C's.
    for (did, rkey, status) in [(B, "3l3ccccccccc2", "ok"), (C, "3l3ccccccccc3", "rejected")] {
        let mut other = RepoWriter::new(did, Keypair::generate(Algorithm::Ed25519)).expect("repo");
        let ev = other
            .commit(
                &[Write::Create {
                    collection: "agent.comms.response".into(),
                    rkey: rkey.into(),
                    record: cbor(
                        &json!({"$type": "agent.comms.response", "sender": did, "request": request,
                        "status": status, "createdAt": at(9)}),
                    ),
                }],
                NOW,
            )
            .expect("commit");
        store.apply(&extractor.extract(&ev).0, 11).expect("apply");
    }

    let (tasks, _) = store
        .tasks(None, Some(B), None, None, &Page::first(10))
        .expect("tasks");
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(
        tasks[0].status, "ok",
        "the assignee's latest answer, not C's"
    );
    assert_eq!(
        tasks[0].response.as_ref().map(|r| r.author.as_str()),
        Some(B)
    );
    let (by_sender, _) = store
        .tasks(None, None, Some(&a), Some("open"), &Page::first(10))
        .expect("tasks");
    assert_eq!(by_sender.len(), 1);
    assert_eq!(by_sender[0].request.rkey, "3l3bbbbbbbbb4");

    let thread = store
        .thread(None, &format!("at://{a}/agent.comms.message/3l3bbbbbbbbb6"))
        .expect("thread")
        .expect("visible");
    let rkeys: Vec<&str> = thread.iter().map(|r| r.rkey.as_str()).collect();
    assert_eq!(
        rkeys,
        vec!["3l3bbbbbbbbb5", "3l3bbbbbbbbb6"],
        "oldest first"
    );
    let around_request = store
        .thread(None, &request)
        .expect("thread")
        .expect("visible");
    assert_eq!(
        around_request.len(),
        4,
        "the request and the three records answering it: {around_request:?}"
    );
    assert!(store
        .thread(
            Some(C),
            &format!("at://{a}/agent.envelope.sealed/3l3aaaaaaaaa3")
        )
        .expect("thread")
        .is_none());

    let handoffs = store
        .handoffs(None, Some(B), Some(&a), &Page::first(10))
        .expect("handoffs");
    assert_eq!(handoffs.rows.len(), 1);
    let ops = store
        .broadcasts(None, Some("ops"), None, None, &Page::first(10))
        .expect("broadcasts");
    assert_eq!(ops.rows.len(), 1);
    let oncall = store
        .broadcasts(None, None, Some("role:oncall"), None, &Page::first(10))
        .expect("broadcasts");
    assert_eq!(oncall.rows, ops.rows);
    let recent = store
        .broadcasts(None, None, None, Some(&at(7)), &Page::first(10))
        .expect("broadcasts");
    assert_eq!(recent.rows.len(), 1, "since is exclusive");

    // Paging: B's inbox one item at a time visits every item once, newest first.
    let whole = store
        .inbox(Some(B), B, None, &Page::first(100))
        .expect("inbox");
    let mut paged = Vec::new();
    let mut page = Page::first(1);
    loop {
        let listing = store.inbox(Some(B), B, None, &page).expect("inbox page");
        paged.extend(listing.rows.into_iter().map(|r| r.uri));
        match listing.cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    let all: Vec<String> = whole.rows.into_iter().map(|r| r.uri).collect();
    assert!(all.len() >= 5, "{all:?}");
    assert_eq!(paged, all);
    assert!(store
        .inbox(
            Some(B),
            B,
            None,
            &Page {
                limit: 5,
                cursor: Some("garbage".into())
            }
        )
        .is_err());

    let agents = store.agents(None, 10, None).expect("agents");
    let dids: Vec<&str> = agents.iter().map(|x| x.did.as_str()).collect();
    assert_eq!(dids, {
        let mut d = vec![a.as_str(), B, C];
        d.sort();
        d
    });
    assert!(store
        .counts()
        .expect("counts")
        .iter()
        .any(|(c, v, n)| c == "agent.comms.broadcast" && v == "public" && *n == 2));
}
