//! What a member does in a running VM over the API, with real tiny-image VMs: exec (output,
//! exit code, stdin), the VM's addresses, files both ways (checksummed, chunked, a broken-off
//! upload that writes nothing, a 40 MiB streamed download, traversal refused), and the console
//! and a TTY over WebSocket. Split from the one 600-line server test (api_labs.rs).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::server::{Body, Server};
use serde_json::{json, Value};

#[test]
fn exec_files_console_and_tty_in_a_vm_over_the_api() {
    let mut srv = Server::start();
    let (_, alice, lab) = srv.alice_with_linked_lab();
    srv.lab_up(&alice, &lab);
    let x = format!("{lab}.a.x");

    // Exec: output and exit code; stdin.
    let (s, v) = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(
            json!({"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]}),
        )),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["stdout"], "out\n");
    assert_eq!(v["stderr"], "err\n");
    let (s, v) = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(
            json!({"argv": ["cat"], "stdin": "fed through stdin"}),
        )),
    );
    assert_eq!(
        (s, v["stdout"].as_str()),
        (200, Some("fed through stdin")),
        "{v}"
    );
    let (s, v) = srv.call("GET", &format!("/vms/{x}"), Some(&alice), None);
    assert_eq!(s, 200);
    assert_eq!(v["addresses"][0], "eth1:10.77.0.1/30", "{v}");

    // Files both ways, checksummed; traversal refused.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (s, v) = srv.call(
        "PUT",
        &format!("/vms/{x}/files?path=/tmp/blob&mode=600"),
        Some(&alice),
        Some(Body::Raw("application/octet-stream", data.clone())),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["size"], 300_000);
    let r = srv
        .agent
        .get(&srv.url(&format!("/vms/{x}/files?path=/tmp/blob")))
        .set("authorization", &format!("Bearer {alice}"))
        .call()
        .unwrap();
    let mut back = Vec::new();
    r.into_reader().read_to_end(&mut back).unwrap();
    assert!(back == data, "downloaded file differs");
    // Without a Content-Length (chunked) the upload is buffered; same file in the guest.
    let r = srv
        .agent
        .put(&srv.url(&format!("/vms/{x}/files?path=/tmp/chunked")))
        .set("authorization", &format!("Bearer {alice}"))
        .send(std::io::Cursor::new(data.clone()));
    let v: Value = r.unwrap().into_json().unwrap();
    assert_eq!(v["size"], 300_000, "{v}");
    assert_eq!(
        v["sha256"],
        srv.call(
            "PUT",
            &format!("/vms/{x}/files?path=/tmp/blob"),
            Some(&alice),
            Some(Body::Raw("application/octet-stream", data.clone()))
        )
        .1["sha256"]
    );
    let sum = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(json!({"argv": ["sha256sum", "/tmp/chunked"]}))),
    );
    assert!(
        sum.1["stdout"]
            .as_str()
            .unwrap()
            .starts_with(v["sha256"].as_str().unwrap()),
        "{sum:?}"
    );
    // A streamed upload whose body breaks off writes nothing.
    {
        let mut s = std::os::unix::net::UnixStream::connect(srv.socket()).unwrap();
        write!(
            s,
            "PUT /api/v1/vms/{x}/files?path=/tmp/partial HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000000\r\n\r\n"
        )
        .unwrap();
        s.write_all(&[7u8; 5000]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(
            out.starts_with("HTTP/1.1 400") && out.contains("nothing was written"),
            "{out}"
        );
    }
    let (_, v) = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(json!({"argv": ["sh", "-c", "ls -a /tmp"]}))),
    );
    assert!(
        !v["stdout"].as_str().unwrap().contains("partial"),
        "a broken-off upload left {v}"
    );
    // Files over 16 MiB are streamed (a sparse 40 MiB file: all zeros).
    let (s, v) = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(
            json!({"argv": ["dd", "if=/dev/zero", "of=/tmp/sparse", "bs=1", "count=0", "seek=40M"]}),
        )),
    );
    assert_eq!((s, &v["exit_code"]), (200, &json!(0)), "{v}");
    let t0 = Instant::now();
    let r = srv
        .agent
        .get(&srv.url(&format!("/vms/{x}/files?path=/tmp/sparse")))
        .set("authorization", &format!("Bearer {alice}"))
        .call()
        .unwrap();
    assert_eq!(r.header("content-length"), Some("41943040"));
    assert!(r.header("x-kobako-sha256").is_none());
    let (mut n, mut nonzero, mut buf) = (0u64, 0u64, vec![0u8; 1 << 20]);
    let mut rd = r.into_reader();
    loop {
        let k = rd.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k as u64;
        nonzero += buf[..k].iter().filter(|b| **b != 0).count() as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "streamed download of 40 MiB: {secs:.1} s ({:.0} MiB/s)",
        40.0 / secs
    );
    assert_eq!((n, nonzero), (40 << 20, 0));
    let (_, v) = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(
            json!({"argv": ["rm", "/tmp/sparse", "/tmp/chunked"]}),
        )),
    );
    assert_eq!(v["exit_code"], 0, "{v}");
    let (s, v) = srv.call(
        "GET",
        &format!("/vms/{x}/files?path=/tmp/../etc/shadow"),
        Some(&alice),
        None,
    );
    assert_eq!(s, 400, "{v}");

    // Console and TTY over WebSocket (on the Unix socket, as root).
    {
        let sock = std::os::unix::net::UnixStream::connect(srv.socket()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let (mut ws, _) = tungstenite::client(
            format!("ws://localhost/api/v1/vms/{x}/tty?command=echo%20hi-from-$((6*7))"),
            sock,
        )
        .unwrap();
        let mut out = Vec::new();
        loop {
            match ws.read().unwrap() {
                tungstenite::Message::Binary(b) => out.extend_from_slice(&b),
                tungstenite::Message::Text(t) => {
                    assert!(t.contains("\"code\":0"), "{t}");
                    break;
                }
                _ => {}
            }
        }
        assert!(
            String::from_utf8_lossy(&out).contains("hi-from-42"),
            "{out:?}"
        );
    }
    {
        let sock = std::os::unix::net::UnixStream::connect(srv.socket()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let (mut ws, _) =
            tungstenite::client(format!("ws://localhost/api/v1/vms/{x}/console"), sock).unwrap();
        ws.send(tungstenite::Message::Binary(
            b"echo console-$((40+2))\n".to_vec().into(),
        ))
        .unwrap();
        let mut out = Vec::new();
        let t0 = Instant::now();
        while !String::from_utf8_lossy(&out).contains("console-42") {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{}",
                String::from_utf8_lossy(&out)
            );
            if let tungstenite::Message::Binary(b) = ws.read().unwrap() {
                out.extend_from_slice(&b);
            }
        }
        let _ = ws.close(None);
    }
}
