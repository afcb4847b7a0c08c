//! The Firecracker-compatible API: routes (method + path + JSON body → [`VmmAction`]), and the
//! API thread that serves them on a Unix socket.
//!
//! The API thread (`fc_api`) parses and validates the *shape* of each request (JSON syntax,
//! unknown fields, path/body ids) itself, so malformed input never reaches the VMM. Well-formed
//! requests go to the event-loop thread over a channel (+ an eventfd to wake its epoll); the
//! event loop owns all VM state, applies the request and sends back a [`VmmResult`] (typed data or error) that [`response`] turns into HTTP.
//!
//! Endpoints (same paths, fields and status codes as Firecracker's swagger; 204 with no body
//! on success, 200 with JSON for GETs, 400 with `{"fault_message": ...}` on error):
//!
//! | method | path | notes |
//! |---|---|---|
//! | GET | `/` | `{id, state, vmm_version, app_name}` |
//! | GET | `/version` | `{firecracker_version}` (our version) |
//! | PUT | `/boot-source` | pre-boot; the kernel must exist and be an ELF vmlinux or bzImage |
//! | GET/PUT/PATCH | `/machine-config` | PUT/PATCH pre-boot |
//! | PUT/PATCH | `/drives/{drive_id}` | PUT pre-boot; virtio-blk (raw/qcow2); PATCH also post-boot |
//! | PUT/PATCH | `/pmem/{id}` | PUT pre-boot; virtio-pmem (the file mapped as guest memory); PATCH (rate limiter) post-boot |
//! | PUT/PATCH | `/network-interfaces/{iface_id}` | PUT pre-boot; virtio-net on a tap; PATCH also post-boot |
//! | PUT | `/vsock` | pre-boot; virtio-vsock, Firecracker's host side on `uds_path` |
//! | PUT | `/entropy` | pre-boot; a virtio-rng device (optional rate limiter) |
//! | PUT | `/actions` | `InstanceStart`, `SendCtrlAltDel`, `FlushMetrics` |
//! | PATCH | `/vm` | `{"state": "Paused" \| "Resumed"}`, post-boot |
//! | GET | `/vm/config` | the whole configuration, in `--config-file` format |
//! | PUT | `/metrics`, `/logger`, `/serial` | pre-boot |
//! | PUT | `/snapshot/create` | `{snapshot_type: "Full", snapshot_path, mem_file_path}`, paused VM only (see [`crate::snapshot`]) |
//! | PUT | `/snapshot/load` | before any configuration but logger/metrics/serial; `mem_backend` File, overrides for taps, vsock and (kobako) drives |
//! | GET/PUT/PATCH | `/mmds` | the MMDS data store (a JSON object; PATCH is a JSON merge patch), any time |
//! | PUT | `/mmds/config` | pre-boot; `version` V1/V2, `network_interfaces`, `ipv4_address`, `imds_compat` (see [`crate::mmds`]) |
//! | GET/PUT/PATCH | `/balloon` | virtio-balloon: PUT pre-boot, PATCH (new target) any time |
//! | GET/PATCH | `/balloon/statistics` | the guest's statistics (when `stats_polling_interval_s` > 0) |
//! | PATCH/GET | `/balloon/hinting/{start,stop,status}` | free page hinting runs (when `free_page_hinting`) |
//! | PUT | `/cpu-config` | pre-boot; a custom CPU template (CPUID and MSR modifiers, see [`crate::arch::cpu_template`]) |
//! | GET | `/kobako/boot-time` | kobako extension: `{wall_us, cpu_us}` once the guest signalled boot |

pub mod http;

use std::os::unix::net::UnixListener;
use std::sync::mpsc::{Receiver, Sender};

use serde::de::DeserializeOwned;
use vmm_sys_util::eventfd::EventFd;

use crate::config::*;
use crate::metrics::{inc, METRICS};
pub use crate::vmm::rpc::{VmmAction, VmmData, VmmResult};
use http::{Request, Response};

/// The HTTP answer to the event loop's answer: 204 for [`VmmData::Empty`], 200 with the
/// JSON of the data, 400 with the error's text as `fault_message`.
pub fn response(r: VmmResult) -> Response {
    let data = match r {
        Ok(d) => d,
        Err(e) => return Response::fault(400, &e.to_string()),
    };
    let json = match data {
        VmmData::Empty => return Response::no_content(),
        VmmData::InstanceInformation(i) => serde_json::json!({
            "id": i.id,
            "state": i.state.name(),
            "vmm_version": i.vmm_version,
            "app_name": i.app_name,
        }),
        VmmData::VmmVersion(v) => serde_json::json!({ "firecracker_version": v }),
        VmmData::MachineConfiguration(m) => serde_json::to_value(&m).unwrap_or_default(),
        VmmData::FullVmConfig(c) => serde_json::to_value(*c).unwrap_or_default(),
        VmmData::BootTime(t) => serde_json::to_value(t).unwrap_or_default(),
        VmmData::MmdsValue(v) | VmmData::BalloonStats(v) => v,
        VmmData::Balloon(b) => serde_json::to_value(b).unwrap_or_default(),
        VmmData::BalloonHinting(h) => serde_json::to_value(h).unwrap_or_default(),
    };
    Response::json(200, &json)
}

/// A request body as the structure `T` (an object: see [`check_no_positional`]).
fn body<T: DeserializeOwned>(req: &Request) -> Result<T, Response> {
    let v: serde_json::Value = any_json(req)?;
    check_no_positional(&v).map_err(|e| {
        Response::fault(
            400,
            &format!("An error occurred when deserializing the json body of a request: {e}."),
        )
    })?;
    any_json(req)
}

/// A request body as any JSON `T` (the MMDS data store takes any document).
fn any_json<T: DeserializeOwned>(req: &Request) -> Result<T, Response> {
    if req.body.is_empty() {
        return Err(Response::fault(400, "The request body is empty."));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        Response::fault(
            400,
            &format!("An error occurred when deserializing the json body of a request: {e}."),
        )
    })
}

/// Maps a request to a [`VmmAction`], or to the error response for it.
pub fn route(req: &Request) -> Result<VmmAction, Response> {
    let path = req.path.trim_end_matches('/');
    let mut segs = path.split('/').skip(1);
    let first = segs.next().unwrap_or("");
    let second = segs.next();
    // Only /balloon/hinting/{start,status,stop} has three segments.
    let third = segs.next();
    if segs.next().is_some() || (third.is_some() && (first, second) != ("balloon", Some("hinting")))
    {
        return Err(invalid(req));
    }
    let m = req.method.as_str();
    Ok(match (m, first, second) {
        ("GET", "", None) => VmmAction::GetInstanceInfo,
        ("GET", "version", None) => VmmAction::GetVersion,
        ("GET", "machine-config", None) => VmmAction::GetMachineConfig,
        ("PUT", "machine-config", None) => VmmAction::PutMachineConfig(body(req)?),
        ("PATCH", "machine-config", None) => VmmAction::PatchMachineConfig(body(req)?),
        ("PUT", "boot-source", None) => VmmAction::PutBootSource(body(req)?),
        ("PUT", "drives", Some(id)) => VmmAction::PutDrive(id.to_string(), body(req)?),
        ("PATCH", "drives", Some(id)) => VmmAction::PatchDrive(id.to_string(), body(req)?),
        ("PUT", "pmem", Some(id)) => VmmAction::PutPmem(id.to_string(), body(req)?),
        ("PATCH", "pmem", Some(id)) => VmmAction::PatchPmem(id.to_string(), body(req)?),
        ("PUT", "network-interfaces", Some(id)) => VmmAction::PutNet(id.to_string(), body(req)?),
        ("PATCH", "network-interfaces", Some(id)) => {
            VmmAction::PatchNet(id.to_string(), body(req)?)
        }
        ("PUT", "vsock", None) => VmmAction::PutVsock(body(req)?),
        ("PUT", "entropy", None) => VmmAction::PutEntropy(body(req)?),
        ("PUT", "actions", None) => VmmAction::Action(body::<Action>(req)?.action_type),
        ("PATCH", "vm", None) => VmmAction::PatchVm(body::<VmStateChange>(req)?.state),
        ("GET", "vm", Some("config")) => VmmAction::GetFullConfig,
        ("PUT", "metrics", None) => VmmAction::PutMetrics(body(req)?),
        ("PUT", "logger", None) => VmmAction::PutLogger(body(req)?),
        ("PUT", "serial", None) => VmmAction::PutSerial(body(req)?),
        ("GET", "kobako", Some("boot-time")) => VmmAction::GetBootTime,
        ("PUT", "snapshot", Some("create")) => VmmAction::SnapshotCreate(body(req)?),
        ("PUT", "snapshot", Some("load")) => VmmAction::SnapshotLoad(body(req)?),
        ("PUT", "mmds", None) => VmmAction::PutMmds(any_json(req)?),
        ("PATCH", "mmds", None) => VmmAction::PatchMmds(any_json(req)?),
        ("GET", "mmds", None) => VmmAction::GetMmds,
        ("PUT", "mmds", Some("config")) => VmmAction::PutMmdsConfig(body(req)?),
        ("PUT", "balloon", None) => VmmAction::PutBalloon(body(req)?),
        ("PUT", "cpu-config", None) => VmmAction::PutCpuConfig(body(req)?),
        ("PATCH", "balloon", None) => VmmAction::PatchBalloon(body(req)?),
        ("GET", "balloon", None) => VmmAction::GetBalloon,
        ("GET", "balloon", Some("statistics")) => VmmAction::GetBalloonStats,
        ("PATCH", "balloon", Some("statistics")) => VmmAction::PatchBalloonStats(body(req)?),
        ("PATCH", "balloon", Some("hinting")) if third == Some("start") => {
            VmmAction::StartBalloonHinting(if req.body.is_empty() {
                BalloonStartCmd::default()
            } else {
                body(req)?
            })
        }
        ("GET", "balloon", Some("hinting")) if third == Some("status") => {
            VmmAction::GetBalloonHinting
        }
        ("PATCH", "balloon", Some("hinting")) if third == Some("stop") => {
            VmmAction::StopBalloonHinting
        }
        ("PUT", "drives" | "network-interfaces" | "pmem", None) => {
            return Err(Response::fault(400, "Missing id in the request path."))
        }
        _ => return Err(unrouted(req, first, second, third)),
    })
}

/// Endpoints of Firecracker's API that kobako-vmm does not implement (first path segment,
/// what it is).
const NOT_IMPLEMENTED: &[(&str, &str)] = &[("hotplug", "memory hotplug")];

/// The methods each implemented path takes.
fn methods_of(first: &str, second: Option<&str>) -> Option<&'static str> {
    Some(match (first, second) {
        ("" | "version", None) => "GET",
        ("machine-config", None) => "GET, PUT or PATCH",
        ("drives" | "network-interfaces" | "pmem", Some(_)) => "PUT or PATCH",
        ("vm", None) => "PATCH",
        ("mmds", None) => "GET, PUT or PATCH",
        ("mmds", Some("config")) | ("cpu-config", None) => "PUT",
        ("balloon", None) => "GET, PUT or PATCH",
        ("balloon", Some("statistics")) => "GET or PATCH",
        ("balloon", Some("hinting")) => "PATCH (start, stop) or GET (status)",
        ("vm", Some("config")) | ("kobako", Some("boot-time")) => "GET",
        ("snapshot", Some("create" | "load"))
        | (
            "boot-source" | "vsock" | "entropy" | "actions" | "metrics" | "logger" | "serial",
            None,
        ) => "PUT",
        _ => return None,
    })
}

/// The error for a request no route took: an endpoint kobako-vmm does not implement, a
/// method the path does not take, or an unknown path. Always 400, as Firecracker answers
/// (its API description declares only 400 and `default` errors).
fn unrouted(req: &Request, first: &str, second: Option<&str>, third: Option<&str>) -> Response {
    let (method, path) = (
        http::clip(&req.method, 16),
        http::clip(&req.path, http::MAX_ECHO),
    );
    if let Some((_, what)) = NOT_IMPLEMENTED.iter().find(|(p, _)| *p == first) {
        return Response::fault(
            400,
            &format!("{method} {path}: {what} is not supported by kobako-vmm."),
        );
    }
    if first == "balloon"
        && second == Some("hinting")
        && !matches!(third, Some("start" | "status" | "stop"))
    {
        return invalid(req);
    }
    match methods_of(first, second) {
        // A known path whose route did not match: the method is not one it takes.
        Some(m) => Response::fault(
            400,
            &format!("Invalid request method and/or path: {method} {path}. This path takes {m}."),
        ),
        None => invalid(req),
    }
}

fn invalid(req: &Request) -> Response {
    Response::fault(
        400,
        &format!(
            "Invalid request method and/or path: {} {}.",
            http::clip(&req.method, 16),
            http::clip(&req.path, http::MAX_ECHO)
        ),
    )
}

/// The API thread's end of the channel to the event loop.
#[derive(Debug)]
pub struct VmmChannel {
    pub requests: Sender<VmmAction>,
    pub responses: Receiver<VmmResult>,
    pub wake: EventFd,
}

impl VmmChannel {
    fn call(&self, req: VmmAction) -> Response {
        if self.requests.send(req).is_err() || self.wake.write(1).is_err() {
            return Response::fault(400, "The VMM is shutting down.");
        }
        match self.responses.recv() {
            Ok(r) => response(r),
            Err(_) => Response::fault(400, "The VMM is shutting down."),
        }
    }
}

/// The API thread body: installs its seccomp filter, then serves until the process ends.
pub fn run_api_thread(
    listener: UnixListener,
    chan: VmmChannel,
    filter: Option<seccompiler::BpfProgram>,
) {
    if let Some(f) = filter {
        if let Err(e) = seccompiler::apply_filter(&f) {
            crate::log_error!("cannot install the API seccomp filter: {e}");
            return;
        }
    }
    let r = http::serve(listener, |req| {
        inc(&METRICS.api_requests);
        let (method, path) = (
            http::clip(&req.method, 16),
            http::clip(&req.path, http::MAX_ECHO),
        );
        crate::log_debug!("API {method} {path}");
        let resp = match route(&req) {
            Ok(r) => chan.call(r),
            Err(resp) => resp,
        };
        if resp.status >= 400 {
            inc(&METRICS.api_errors);
            crate::log_warn!(
                "API {method} {path} -> {} {}",
                resp.status,
                resp.body.as_deref().unwrap_or("")
            );
        }
        resp
    });
    if let Err(e) = r {
        crate::log_error!("API server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(m: &str, p: &str, b: &str) -> Request {
        Request {
            method: m.into(),
            path: p.into(),
            body: b.as_bytes().to_vec(),
            close: false,
        }
    }

    #[test]
    fn typed_answers_become_firecracker_responses() {
        use crate::vmm::{InstanceInfo, InstanceState, VmmActionError};
        assert_eq!(response(Ok(VmmData::Empty)), Response::no_content());
        let r = response(Ok(VmmData::InstanceInformation(InstanceInfo::new(
            "vm1",
            InstanceState::Paused,
        ))));
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "vm1",
                "state": "Paused",
                "vmm_version": crate::VERSION,
                "app_name": "kobako-vmm",
            })
        );
        let r = response(Ok(VmmData::VmmVersion("1.2.3")));
        assert_eq!(
            r.body.as_deref(),
            Some(r#"{"firecracker_version":"1.2.3"}"#)
        );
        let r = response(Err(VmmActionError::AlreadyStarted));
        assert_eq!(
            r,
            Response::fault(
                400,
                "The microVM is already running: InstanceStart is only allowed once."
            )
        );
    }

    #[test]
    fn routes() {
        assert_eq!(
            route(&req("GET", "/", "")).unwrap(),
            VmmAction::GetInstanceInfo
        );
        assert_eq!(
            route(&req(
                "PUT",
                "/actions",
                r#"{"action_type":"InstanceStart"}"#
            ))
            .unwrap(),
            VmmAction::Action(ActionType::InstanceStart)
        );
        assert_eq!(
            route(&req("PATCH", "/vm", r#"{"state":"Paused"}"#)).unwrap(),
            VmmAction::PatchVm(VmStateName::Paused)
        );
        assert_eq!(
            route(&req("GET", "/vm/config", "")).unwrap(),
            VmmAction::GetFullConfig
        );
        let e = route(&req("PUT", "/actions", r#"{"action_type":"Bogus"}"#)).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.body.unwrap().contains("fault_message"));
        assert_eq!(route(&req("DELETE", "/", "")).unwrap_err().status, 400);
        assert_eq!(
            route(&req("PUT", "/machine-config", "{"))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            route(&req("PUT", "/machine-config", ""))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(route(&req("GET", "/nope/a/b", "")).unwrap_err().status, 400);
        // serde would read a structure from an array, field by field: refused.
        for (m, p, b) in [
            ("PUT", "/machine-config", "[2, 256]"),
            ("PUT", "/logger", "[]"),
            ("PUT", "/entropy", r#"{"rate_limiter": []}"#),
            ("PUT", "/actions", r#"["InstanceStart"]"#),
            (
                "PUT",
                "/snapshot/load",
                r#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [["eth0", "tap"]]}"#,
            ),
        ] {
            let e = route(&req(m, p, b)).unwrap_err();
            assert!(
                e.body.unwrap().contains("invalid type: sequence"),
                "{m} {p} {b}"
            );
        }
        assert!(matches!(
            route(&req("PUT", "/mmds", r#"{"a": [1, [2]]}"#)),
            Ok(VmmAction::PutMmds(_))
        ));
        assert!(matches!(
            route(&req(
                "PUT",
                "/mmds/config",
                r#"{"network_interfaces": ["eth0"]}"#
            )),
            Ok(VmmAction::PutMmdsConfig(_))
        ));
        let msg = |r: Response| r.body.unwrap();
        assert!(
            msg(route(&req("PUT", "/hotplug/memory", "{}")).unwrap_err())
                .contains("memory hotplug is not supported by kobako-vmm")
        );
        assert!(matches!(
            route(&req("PUT", "/cpu-config", "{}")),
            Ok(VmmAction::PutCpuConfig(_))
        ));
        // virtio-pmem: Firecracker's Pmem and PartialPmem bodies; defaults false.
        let Ok(VmmAction::PutPmem(id, p)) = route(&req(
            "PUT",
            "/pmem/p0",
            r#"{"id": "p0", "path_on_host": "/x"}"#,
        )) else {
            panic!("PUT /pmem")
        };
        assert_eq!(
            (id.as_str(), p.root_device, p.read_only),
            ("p0", false, false)
        );
        assert!(matches!(
            route(&req("PATCH", "/pmem/p0", r#"{"id": "p0"}"#)),
            Ok(VmmAction::PatchPmem(..))
        ));
        assert!(msg(route(&req("PUT", "/pmem", "{}")).unwrap_err()).contains("Missing id"));
        assert!(msg(route(&req("GET", "/pmem/p0", "")).unwrap_err()).contains("takes PUT or PATCH"));
        for bad in [
            r#"{"id": "p0"}"#,
            r#"{"id": "p0", "path_on_host": "/x", "size": 1}"#,
            r#"{"id": "p0", "path_on_host": "/x", "read_only": "yes"}"#,
        ] {
            assert_eq!(
                route(&req("PUT", "/pmem/p0", bad)).unwrap_err().status,
                400,
                "{bad}"
            );
        }
        assert_eq!(
            route(&req("PATCH", "/balloon/hinting/start", "")).unwrap(),
            VmmAction::StartBalloonHinting(BalloonStartCmd::default())
        );
        assert_eq!(
            route(&req("GET", "/balloon/hinting/status", "")).unwrap(),
            VmmAction::GetBalloonHinting
        );
        assert_eq!(
            route(&req("GET", "/balloon/hinting/nope", ""))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            route(&req("GET", "/mmds/config/x", "")).unwrap_err().status,
            400
        );
        assert!(
            msg(route(&req("GET", "/balloon/hinting/start", "")).unwrap_err())
                .contains("takes PATCH (start, stop) or GET (status)")
        );
        assert_eq!(route(&req("GET", "/mmds", "")).unwrap(), VmmAction::GetMmds);
        assert!(msg(route(&req("DELETE", "/mmds", "")).unwrap_err())
            .contains("takes GET, PUT or PATCH"));
        assert!(msg(route(&req("GET", "/mmds/config", "")).unwrap_err()).contains("takes PUT."));
        assert!(
            msg(route(&req("DELETE", "/machine-config", "")).unwrap_err())
                .contains("This path takes GET, PUT or PATCH.")
        );
        assert!(
            msg(route(&req("GET", "/actions", "")).unwrap_err()).contains("This path takes PUT.")
        );
        assert!(
            msg(route(&req("GET", "/drives/x", "")).unwrap_err()).contains("takes PUT or PATCH")
        );
        assert!(!msg(route(&req("GET", "/nope", "")).unwrap_err()).contains("takes"));
    }
}
