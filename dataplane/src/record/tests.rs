use super::format::*;
use super::*;

/// A minimal reader, as docs/recording.md describes: header, data blocks, trailer.
type Frames = Vec<(u8, u64, Vec<u8>)>;

fn read(path: &Path) -> (serde_json::Value, Frames, Option<serde_json::Value>) {
    let data = std::fs::read(path).unwrap();
    assert_eq!(&data[..6], MAGIC);
    assert_eq!(u16::from_le_bytes([data[6], data[7]]), VERSION);
    let meta_len = u32::from_le_bytes(data[8..12].try_into().unwrap()) as usize;
    let meta = serde_json::from_slice(&data[12..12 + meta_len]).unwrap();
    let mut at = 12 + meta_len;
    let mut frames = Vec::new();
    let mut trailer = None;
    while at + 9 <= data.len() {
        let kind = data[at];
        let stored = u32::from_le_bytes(data[at + 1..at + 5].try_into().unwrap()) as usize;
        let raw_len = u32::from_le_bytes(data[at + 5..at + 9].try_into().unwrap()) as usize;
        let body = &data[at + 9..at + 9 + stored];
        at += 9 + stored;
        if kind == BLOCK_TRAILER {
            trailer = Some(serde_json::from_slice(body).unwrap());
            break;
        }
        assert_eq!(kind, BLOCK_DATA);
        assert!(raw_len <= CHUNK);
        let raw = zstd::bulk::decompress(body, raw_len).unwrap();
        let mut i = 0;
        while i < raw.len() {
            let dir = raw[i];
            let ts = u64::from_le_bytes(raw[i + 1..i + 9].try_into().unwrap());
            let len = u32::from_le_bytes(raw[i + 9..i + 13].try_into().unwrap()) as usize;
            frames.push((dir, ts, raw[i + 13..i + 13 + len].to_vec()));
            i += 13 + len;
        }
    }
    (meta, frames, trailer)
}

fn meta(uuid: &str) -> Meta<'_> {
    Meta {
        session_uuid: uuid,
        identity: "alice",
        identity_detail: Some(r#"{"username":"alice","groups":["analysts"]}"#),
        connection: "shop",
        client_addr: "127.0.0.1:5555",
        protocol: "3.0".into(),
    }
}

#[tokio::test]
async fn round_trip_with_large_segments_and_bounded_queue() {
    let dir = std::env::temp_dir().join(format!("pgward-rec-{}", std::process::id()));
    let recorder = Recorder::start(dir.clone(), 1).unwrap();
    let uuid = "0b3c6a52-1a2b-4c5d-8e9f-000000000001";
    let tap = RecordTap::new(Some(recorder.open(&meta(uuid)).await.unwrap()));
    tap.client(b"Q\0\0\0\x0dselect 1\0").await.unwrap();
    // 5 MiB to the client in 1 MiB segments: split into blocks of at most CHUNK.
    let big: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i; 1 << 20])).collect();
    tap.server(&big).await.unwrap();
    tap.finish("client closed").await.unwrap();

    let (meta, frames, trailer) = read(&recorder.path_of(uuid).unwrap());
    assert_eq!(meta["session_uuid"], uuid);
    assert_eq!(meta["identity_detail"]["groups"][0], "analysts");
    assert_eq!(meta["connection"], "shop");
    assert_eq!(frames[0].0, FROM_CLIENT);
    assert_eq!(frames[0].2, b"Q\0\0\0\x0dselect 1\0");
    let to_client: Vec<u8> = frames
        .iter()
        .filter(|f| f.0 == TO_CLIENT)
        .flat_map(|f| f.2.clone())
        .collect();
    assert_eq!(to_client.len(), 5 << 20);
    assert!(to_client
        .chunks(1 << 20)
        .enumerate()
        .all(|(i, c)| c.iter().all(|b| usize::from(*b) == i)));
    let trailer = trailer.unwrap();
    assert_eq!(trailer["server_bytes"], 5 << 20);
    assert_eq!(trailer["client_bytes"], 14);
    assert_eq!(trailer["end_reason"], "client closed");
    let peak = recorder.stats.buffered_peak.load(Ordering::Relaxed);
    assert!(
        peak > 0 && peak <= (QUEUE_BLOCKS + 1) * CHUNK,
        "peak {peak}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn unwritable_directory_refuses_to_open() {
    let dir = std::env::temp_dir().join(format!("pgward-rec-ro-{}", std::process::id()));
    let recorder = Recorder::start(dir.clone(), 1).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = recorder
        .open(&meta("0b3c6a52-0000-0000-0000-000000000002"))
        .await;
    assert!(matches!(err, Err(RecordError::Failed(_))));
    assert!(recorder.open(&meta("../etc/passwd")).await.is_err());
}

#[tokio::test]
async fn a_failed_write_ends_the_session_at_its_next_tap() {
    let dir = std::env::temp_dir().join(format!("pgward-rec-full-{}", std::process::id()));
    let recorder = Recorder::start(dir.clone(), 1).unwrap();
    let tap = RecordTap::new(Some(
        recorder
            .open(&meta("0b3c6a52-0000-0000-0000-000000000003"))
            .await
            .unwrap(),
    ));
    // The writer marks the session failed as a write error would (disk full).
    if let Some(r) = &tap.0 {
        r.status
            .fail(RecordError::DiskFull("No space left on device".into()));
    }
    let err = tap.client(b"x").await.unwrap_err();
    assert_eq!(err.sqlstate(), "53100");
    std::fs::remove_dir_all(dir).unwrap();
}
