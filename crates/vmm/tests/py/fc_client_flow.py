#!/usr/bin/env python3
"""Drives kobako-vmm with a third-party Firecracker client from PyPI: firecracker-python.

Run by crates/vmm/tests/fc_client.rs with the venv that scripts/setup.sh makes
(/var/cache/kobako/venv-fcclient). Every step goes through the library's own code paths,
the ones its MicroVM class uses:

- ProcessManager.start launches "firecracker" with the arguments MicroVM._run_firecracker
  passes (--api-sock, --id, --log-path): here a symlink named firecracker to kobako-vmm.
  The library hard-codes /usr/local/bin/firecracker and /var/lib/firecracker in its config
  defaults, so the script points its managers' config objects at a temporary directory.
- Api (the library's client of the published API) configures and boots the VM the way
  MicroVM.create does: boot-source, drives/rootfs, machine-config, actions InstanceStart.
  No network interface: that needs a TAP device and host networking, and MicroVM's own
  network setup (pyroute2, nftables, a public-IP lookup) is not for a test machine.
- VMMManager.update_vmm_state / get_vmm_state pause, resume and read GET /, as MicroVM.pause
  and MicroVM.resume do; Api.create_snapshot / load_snapshot send the bodies of
  MicroVM.snapshot("create") and MicroVM.snapshot("load").
- ProcessManager.stop stops the VMM as MicroVM.delete does: SIGTERM, then SIGKILL.

The guest is the tiny "ticker" (prints dots forever to the serial port, which is the VMM's
stdout, which the library sends to DATA/ID/firecracker.log): its size shows guest progress.
Every step prints what it did and what came back; any failure prints FAIL with the request
and the answer, stops the VMMs it launched and exits 1. A JSON summary goes to --summary.
"""
import argparse
import http.client
import importlib.metadata
import json
import os
import signal
import socket
import sys
import time
import traceback

LIB = "firecracker-python"
MEM_MIB = 128  # MicroVM rounds memory up to 128 MiB; use that size
BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"  # MicroVM's, without its ip= part

T0 = time.monotonic()
SUMMARY = {"library": LIB, "steps": [], "vmm_pids": [], "states": []}


def log(msg):
    print(f"[{time.monotonic() - T0:7.3f}s] {msg}", flush=True)


class StepFailed(Exception):
    pass


def step(name, fn, show=str):
    """Runs one step, prints its result (through show) and time; raises StepFailed on error."""
    t = time.monotonic()
    log(f"STEP {name} ...")
    try:
        result = fn()
    except StepFailed:
        raise
    except Exception as e:  # the library raises its own APIError/VMMError/ProcessError
        raise StepFailed(f"{name}: {type(e).__name__}: {e}") from e
    ms = (time.monotonic() - t) * 1000
    shown = show(result)
    log(f"  ok {name} ({ms:.0f} ms): {shown}")
    SUMMARY["steps"].append({"name": name, "ms": round(ms, 1), "result": shown})
    return result


def check(cond, msg):
    if not cond:
        raise StepFailed(msg)


def raw_get(sock, path):
    """GET over the API socket with the standard library: a cross-check beside the library."""
    conn = http.client.HTTPConnection("localhost", timeout=10)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock)
    conn.sock = s
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def wait_growth(path, above, secs=20, by=3):
    """Waits until the file has grown by `by` bytes past `above`; returns its size."""
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if size(path) >= above + by:
            return size(path)
        time.sleep(0.05)
    raise StepFailed(f"guest made no progress: {path} stayed at {size(path)} bytes for {secs} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--firecracker", required=True, help="the VMM binary (named firecracker)")
    ap.add_argument("--data-dir", required=True, help="the library's data_path")
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--summary", help="write a JSON summary here")
    a = ap.parse_args()

    version = importlib.metadata.version(LIB)
    SUMMARY["version"] = version
    log(f"{LIB} {version} on Python {sys.version.split()[0]}")
    # Importing the package looks for /usr/local/bin/firecracker (a warning when absent; only
    # when present does it go on to make /var/lib/firecracker): nothing here can turn that off.
    from firecracker.api import Api
    from firecracker.process import ProcessManager
    from firecracker.utils import generate_id
    from firecracker.vmm import VMMManager

    data = os.path.abspath(a.data_dir)
    # The library's Api puts the socket path, URL-quoted, in the host part of an http:// URL,
    # and requests (urllib3) lower-cases hosts: a socket path with capitals is never found.
    if data != data.lower():
        log(f"FAIL --data-dir {data}: {LIB} cannot reach a socket whose path has capitals")
        return 2
    os.makedirs(data, exist_ok=True)
    pm = ProcessManager()
    pm._config.binary_path = os.path.abspath(a.firecracker)
    pm._config.data_path = data
    vmm = VMMManager()
    vmm._config.data_path = data
    launched = []

    def launch(vm_id):
        """MicroVM._run_firecracker, minus the rootfs copy."""
        sock = vmm.socket_file(vm_id)
        vmm.create_vmm_dir(f"{data}/{vm_id}/logs")
        vmm.create_log_file(vm_id, f"{vm_id}.log")
        pid = pm.start(vm_id, ["--api-sock", sock, "--id", vm_id,
                               "--log-path", f"{data}/{vm_id}/logs/{vm_id}.log"])
        launched.append(pid)
        SUMMARY["vmm_pids"].append(pid)
        check(pm.is_running(vm_id), "ProcessManager.is_running is false right after start")
        api = vmm.get_api(vm_id)
        deadline = time.monotonic() + 10
        while True:
            try:
                desc = api.describe.get().json()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return pid, sock, api, desc

    def launched_str(r):
        return f"vmm pid {r[0]}, socket {r[1]}, GET / {r[3]}"

    def state(vm_id, sock, expect):
        lib = vmm.get_vmm_state(vm_id)
        code, raw = raw_get(sock, "/")
        SUMMARY["states"].append({"vm": vm_id, "library": lib, "raw": raw.get("state")})
        check(lib == expect, f"VMMManager.get_vmm_state: {lib!r}, expected {expect!r}")
        check(code == 200 and raw.get("state") == expect, f"GET / answered {code} {raw}")
        return f"GET / state {lib!r} (library and raw HTTP agree)"

    # The library drops the Popen of the VMM it starts, so a stopped VMM would stay a zombie of
    # this process: ProcessManager.stop (kill(pid, 0) until ESRCH) would wait out its 2 s and
    # 5 s timeouts and then report success all the same. Reap the VMMs here, as a long-running
    # supervisor would, and keep how each one ended.
    ended = {}

    def reap(_sig, _frame):
        while True:
            try:
                p, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if p == 0:
                return
            ended[p] = os.waitstatus_to_exitcode(st)
    signal.signal(signal.SIGCHLD, reap)

    try:
        vm_id = generate_id()
        console = f"{data}/{vm_id}/firecracker.log"  # the VMM's stdout: the guest's serial port
        pid, sock, api, desc = step("launch kobako-vmm as firecracker (ProcessManager.start)",
                                    lambda: launch(vm_id), launched_str)
        step("GET / before boot", lambda: (check(desc.get("state") == "Not started",
                                                 f"GET / answered {desc}"), desc)[1])
        step("GET /version", lambda: api.version.get().json())
        step("process is named firecracker (ProcessManager.get_pid)",
             lambda: "pid %s created %s" % pm.get_pid(vm_id))

        # Configure as MicroVM.create does (its order), without the network interface.
        step("PUT /boot-source", lambda: api.boot.put(
            kernel_image_path=a.kernel, boot_args=BOOT_ARGS).status_code)
        step("PUT /drives/rootfs", lambda: api.drive.put(
            drive_id="rootfs", path_on_host=a.rootfs, is_root_device=True,
            is_read_only=False).status_code)
        step("PUT /machine-config", lambda: api.machine_config.put(
            vcpu_count=1, mem_size_mib=MEM_MIB).status_code)

        def vm_config():
            c = vmm.get_vmm_config(vm_id)
            check(c["machine-config"]["mem_size_mib"] == MEM_MIB
                  and c["machine-config"]["vcpu_count"] == 1, f"machine-config {c}")
            check(c["boot-source"]["kernel_image_path"] == a.kernel, f"boot-source {c}")
            check([d["drive_id"] for d in c["drives"]] == ["rootfs"], f"drives {c}")
            return {k: c[k] for k in ("machine-config", "boot-source", "drives")}
        step("GET /vm/config (VMMManager.get_vmm_config)", vm_config)

        step("PUT /actions InstanceStart", lambda: api.actions.put(
            action_type="InstanceStart").status_code)
        step("GET / after boot", lambda: state(vm_id, sock, "Running"))

        def listed():
            pid_, created = pm.get_pid(vm_id)
            vmm.create_vmm_json_file(id=vm_id, Name="kobako-fc-client", CreatedAt=created,
                                     Rootfs=a.rootfs, Kernel=a.kernel, Pid=pid_)
            vms = {v["id"]: v for v in vmm.list_vmm()}
            check(vm_id in vms, f"VMMManager.list_vmm does not list {vm_id}: {vms}")
            return vms[vm_id]
        step("VMMManager.list_vmm finds it (name firecracker, --api-sock)", listed)
        step("guest prints (serial output grows)", lambda: f"{wait_growth(console, 0)} bytes")

        # Pause: the guest must stop.
        step("PATCH /vm Paused (VMMManager.update_vmm_state)",
             lambda: vmm.update_vmm_state(vm_id, "Paused"))
        step("GET / after pause", lambda: state(vm_id, sock, "Paused"))
        paused_at = size(console)

        def still():
            time.sleep(0.5)
            check(size(console) == paused_at,
                  f"guest progressed while paused: {paused_at} -> {size(console)} bytes")
            return f"{paused_at} bytes, unchanged over 0.5 s"
        step("guest is stopped while paused", still)

        # Snapshots of the paused VM: first the body of MicroVM.snapshot("create") (no
        # snapshot_type: Full by default), then snapshot_type Full spelled out.
        snaps = {}

        def snapshot(tag, **extra):
            st, mem = f"{data}/snap-{tag}.state", f"{data}/snap-{tag}.mem"
            api.create_snapshot.put(mem_file_path=mem, snapshot_path=st, **extra)
            check(os.path.getsize(st) > 0, f"{st} is empty")
            check(os.path.getsize(mem) == MEM_MIB << 20,
                  f"{mem} has {os.path.getsize(mem)} bytes, expected {MEM_MIB << 20}")
            snaps[tag] = {"state": st, "mem": mem, "state_bytes": os.path.getsize(st),
                          "mem_bytes": os.path.getsize(mem)}
            return snaps[tag]
        step("PUT /snapshot/create (MicroVM.snapshot body)", lambda: snapshot("lib"))
        step("PUT /snapshot/create snapshot_type Full",
             lambda: snapshot("full", snapshot_type="Full"))
        SUMMARY["snapshots"] = snaps
        step("guest still stopped after the snapshots", lambda: (check(
            size(console) == paused_at, "guest ran during the snapshot"), size(console))[1])

        # Resume: the guest goes on.
        step("PATCH /vm Resumed (VMMManager.update_vmm_state)",
             lambda: vmm.update_vmm_state(vm_id, "Resumed"))
        step("GET / after resume", lambda: state(vm_id, sock, "Running"))
        step("guest prints again", lambda: f"{paused_at} -> {wait_growth(console, paused_at)} bytes")

        # Ctrl-Alt-Del: the ticker guest has no keyboard driver and keeps running.
        step("PUT /actions SendCtrlAltDel", lambda: api.actions.put(
            action_type="SendCtrlAltDel").status_code)
        step("still running after SendCtrlAltDel", lambda: (check(
            pm.is_running(vm_id), "the VMM exited"), state(vm_id, sock, "Running"))[1])

        # Restore the library-made snapshot in a second VMM, with MicroVM.snapshot("load")'s
        # body (without network_overrides: the VM has no network interface).
        vm2 = generate_id()
        console2 = f"{data}/{vm2}/firecracker.log"
        pid2, sock2, api2, _ = step("launch a second kobako-vmm for the restore",
                                    lambda: launch(vm2), launched_str)
        step("PUT /snapshot/load (MicroVM.snapshot body, resume_vm)", lambda: api2.load_snapshot.put(
            enable_diff_snapshots=True,
            mem_backend={"backend_type": "File", "backend_path": snaps["lib"]["mem"]},
            snapshot_path=snaps["lib"]["state"], resume_vm=True).status_code)
        step("GET / of the restored VM", lambda: state(vm2, sock2, "Running"))
        step("restored guest prints", lambda: f"{wait_growth(console2, 0)} bytes")
        SUMMARY["console_bytes"] = {"original": size(console), "restored": size(console2)}

        # Stop both as MicroVM.delete does (ProcessManager.stop: SIGTERM, then SIGKILL).
        for v, p in ((vm_id, pid), (vm2, pid2)):
            def stop(v=v, p=p):
                check(pm.stop(v), f"ProcessManager.stop({v}) returned false")
                deadline = time.monotonic() + 5
                while p not in ended and time.monotonic() < deadline:
                    time.sleep(0.01)
                check(p in ended, f"pid {p} has not ended")
                launched.remove(p)
                how = f"signal {-ended[p]}" if ended[p] < 0 else f"exit code {ended[p]}"
                SUMMARY.setdefault("ended", {})[v] = ended[p]
                gone = not os.path.exists(f"{data}/{v}/firecracker.socket")
                return f"pid {p} ended by {how}; socket removed: {gone}"
            step(f"stop {v} (ProcessManager.stop)", stop)

        SUMMARY["ok"] = True
        log(f"PASS: {LIB} {version} drove kobako-vmm through {len(SUMMARY['steps'])} steps")
        return 0
    except StepFailed as e:
        SUMMARY["ok"] = False
        SUMMARY["error"] = str(e)
        log(f"FAIL {e}")
        if e.__cause__ is not None:
            traceback.print_exception(e.__cause__, file=sys.stdout)
        return 1
    finally:
        for p in launched:  # only the VMMs this script started, by pid, if not yet reaped
            if p in ended:
                continue
            try:
                os.kill(p, signal.SIGKILL)
                log(f"killed leftover vmm pid {p}")
            except ProcessLookupError:
                pass
        if a.summary:
            with open(a.summary, "w") as f:
                json.dump(SUMMARY, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
