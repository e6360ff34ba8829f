//! The callback store under a real "disk full": the test re-runs itself in a
//! child process whose file-size limit (`RLIMIT_FSIZE`, with `SIGXFSZ`
//! ignored) makes a write fail with `EFBIG` half-way through a record,
//! exactly as a full disk does (a short write, then an error). No mock of the
//! filesystem: real files, the real receiver, a real restart (reopen) in the
//! parent process.

use rescind_channel_pandapon::callback::{
    CallbackReceiver, CallbackSink, CallbackStore, FileCallbackStore,
};
use rescind_core::Observation;
use std::path::Path;
use std::sync::Arc;

const CHILD_ENV: &str = "RESCIND_TEST_DISK_FULL_CHILD_DIR";
const TEST_NAME: &str = "disk_full_never_loses_an_acknowledged_message";

struct Count;
impl CallbackSink for Count {
    fn deliver(&self, _obs: Observation) -> usize {
        0
    }
}

fn refund(order: u32) -> String {
    format!(
        r#"{{"messageType":"REFUND_STATUS_CHANGE","messagePlatform":1,"timestamp":1,"messageBody":"{{\"orderId\":{order},\"refundId\":\"R{order}\",\"refundStatus\":\"refundsuccess\"}}"}}"#
    )
}

#[test]
fn disk_full_never_loses_an_acknowledged_message() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        #[cfg(unix)]
        child(Path::new(&dir));
        return;
    }
    if !cfg!(unix) {
        println!("SKIPPED {TEST_NAME}: needs RLIMIT_FSIZE (unix)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let log = format!(
        "child stdout:\n{}\nchild stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(log.contains("CHILD DONE"), "the child did not run: {log}");
    // The restart: every message the child acknowledged (200) is there,
    // and the file is whole (no torn line, nothing skipped).
    let acked: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("acked.json")).unwrap())
            .unwrap();
    assert_eq!(acked.len(), 6, "{log}");
    let store = FileCallbackStore::open(dir.path().join("callbacks.jsonl")).unwrap();
    assert!(store.open_report().is_clean(), "{:?}", store.open_report());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stored: Vec<String> = rt
        .block_on(store.load_all())
        .unwrap()
        .into_iter()
        .map(|r| r.message.body)
        .collect();
    assert_eq!(stored.len(), acked.len(), "{stored:?}");
    for body in &acked {
        let order = serde_json::from_str::<serde_json::Value>(body).unwrap()["messageBody"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(stored.contains(&order), "acknowledged but lost: {order}");
    }
}

#[cfg(unix)]
fn set_soft_fsize(limit: Option<u64>) {
    // SAFETY: plain libc calls on a valid, initialised struct, in a child
    // process that runs only this test.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
        lim.rlim_cur = match limit {
            Some(n) => n as libc::rlim_t,
            None => lim.rlim_max,
        };
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim),
            0,
            "setrlimit(RLIMIT_FSIZE)"
        );
    }
}

#[cfg(unix)]
fn child(dir: &Path) {
    // SAFETY: ignoring a signal; exceeding the limit then fails the write
    // with EFBIG instead of killing the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let path = dir.join("callbacks.jsonl");
        let store = Arc::new(FileCallbackStore::open(&path).unwrap());
        let rx = CallbackReceiver::new(store.clone(), Arc::new(Count));
        let mut acked = Vec::new();
        for i in 1..=3 {
            let (status, _) = rx.receive(refund(i).as_bytes()).await;
            assert_eq!(status, 200);
            acked.push(refund(i));
        }
        let good = std::fs::metadata(&path).unwrap().len();
        // The disk fills up 40 bytes into the next record.
        set_soft_fsize(Some(good + 40));
        for i in [4, 5] {
            let (status, _) = rx.receive(refund(i).as_bytes()).await;
            assert_eq!(status, 500, "a failed append must not be acknowledged");
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                good,
                "the partial line is truncated away before answering"
            );
        }
        match store.probe() {
            Err(rescind_channel_pandapon::Error::StoreWriteFailed {
                offset,
                rolled_back,
                ..
            }) => assert_eq!((offset, rolled_back), (good, true)),
            other => panic!("probe after a failed append: {other:?}"),
        }
        assert_eq!(rx.stats().store_errors, 2);
        // Room again: PandaPon re-pushes 4 and 5, and 6 arrives.
        set_soft_fsize(None);
        for i in [4, 5, 6] {
            let (status, _) = rx.receive(refund(i).as_bytes()).await;
            assert_eq!(status, 200);
            acked.push(refund(i));
        }
        store.probe().unwrap();
        rx.settled().await;
        std::fs::write(
            dir.join("acked.json"),
            serde_json::to_string(&acked).unwrap(),
        )
        .unwrap();
    });
    println!("CHILD DONE");
}
