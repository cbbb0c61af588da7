//! A Hub dataset id downloaded for real: hf-hub's HTTP requests (repo listing, a `Range:
//! bytes=0-0` metadata probe with `ETag` / `X-Repo-Commit` / `Content-Range`, the file itself)
//! answered by a local server standing in for huggingface.co (`HubOptions::endpoint`, which
//! `HF_ENDPOINT` sets), then read back offline from the cache it wrote. No network needed.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use qtune_data::{resolve_data_files, HubOptions};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const ROWS: &str =
    "{\"prompt\": \"p1\", \"completion\": \"c1\"}\n{\"prompt\": \"p2\", \"completion\": \"c2\"}\n";
const CARD: &str = "# a dataset card without configs\n";

/// Serves the repo `user/tiny` until the test ends; returns its address.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("range: bytes=") {
                    range = Some(v.trim().to_string());
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let listing = format!(
                "{{\"siblings\": [{{\"rfilename\": \"README.md\"}}, {{\"rfilename\": \"data/train.jsonl\"}}], \"sha\": \"{SHA}\"}}"
            );
            let (status, headers, body): (&str, String, Vec<u8>) = match path.as_str() {
                "/api/datasets/user/tiny/revision/main" => (
                    "200 OK",
                    "Content-Type: application/json\r\n".into(),
                    listing.into_bytes(),
                ),
                p if p.starts_with("/datasets/user/tiny/resolve/main/") => {
                    let file = &p["/datasets/user/tiny/resolve/main/".len()..];
                    let full: &[u8] = match file {
                        "README.md" => CARD.as_bytes(),
                        "data/train.jsonl" => ROWS.as_bytes(),
                        _ => b"",
                    };
                    if full.is_empty() {
                        ("404 Not Found", String::new(), Vec::new())
                    } else {
                        let start: usize = range
                            .as_deref()
                            .and_then(|r| r.split('-').next())
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        let end = match range.as_deref() {
                            Some("0-0") => 0,
                            _ => full.len() - 1,
                        };
                        let headers = format!(
                            "ETag: \"etag-{}\"\r\nX-Repo-Commit: {SHA}\r\nContent-Range: bytes {start}-{end}/{}\r\n",
                            file.replace('/', "-"),
                            full.len()
                        );
                        ("206 Partial Content", headers, full[start..=end].to_vec())
                    }
                }
                _ => ("404 Not Found", String::new(), Vec::new()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            let _ = stream.flush();
            // Drain what the client may still send before closing.
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(10)));
            let _ = stream.read(&mut [0u8; 64]);
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_hub_id_is_downloaded_into_the_cache_and_then_read_offline() {
    let cache = tempfile::tempdir().unwrap();
    let online = HubOptions {
        cache: cache.path().to_path_buf(),
        offline: false,
        endpoint: serve(),
    };
    let got = resolve_data_files("user/tiny", "train", None, None, &online).unwrap();
    assert_eq!(got.files.len(), 1, "{got:?}");
    assert_eq!(std::fs::read_to_string(&got.files[0]).unwrap(), ROWS);
    // hf-hub's (= huggingface_hub's) layout: snapshots/{commit}/{file}, refs/main → commit.
    let repo = cache.path().join("datasets--user--tiny");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        SHA
    );
    assert!(got.files[0].ends_with(format!("snapshots/{SHA}/data/train.jsonl")));

    // The same id offline: the cached snapshot, no server needed.
    let offline = HubOptions {
        offline: true,
        endpoint: "http://127.0.0.1:9".into(),
        ..online
    };
    let again = resolve_data_files("user/tiny", "train", None, None, &offline).unwrap();
    assert_eq!(again.files, got.files);
}

#[test]
fn an_unreachable_hub_is_an_error_naming_the_id() {
    let cache = tempfile::tempdir().unwrap();
    let hub = HubOptions {
        cache: cache.path().to_path_buf(),
        offline: false,
        endpoint: "http://127.0.0.1:9".into(), // discard port: nothing listens
    };
    let e = resolve_data_files("user/tiny", "train", None, None, &hub)
        .unwrap_err()
        .to_string();
    assert!(e.contains("user/tiny") && e.contains("Hub"), "{e}");
}
