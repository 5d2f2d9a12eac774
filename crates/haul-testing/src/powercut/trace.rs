//! Seeing `syncfs` and `sync` of a traced process.
//!
//! FUSE never hears of a `syncfs`: the kernel sends `FUSE_SYNCFS` only to virtiofs servers
//! (checked on this kernel: a `syncfs` on the mount reaches the server as nothing at all), and
//! without a writeback cache there are no dirty pages for it to write either. Yet `syncfs` is
//! what haul's receiver calls to make everything it installed durable. So the process under
//! test runs under `ptrace`: every syscall entry stops it, and at the entry of a `syncfs` on
//! the mount (or a `sync`) the tracer tells the file system, which marks everything durable
//! before the syscall goes on (or, after the trigger, leaves the thread stopped for good).
//!
//! The child is started through `sh -c 'kill -STOP $$ && exec "$@"'`, so it is seized while
//! stopped, before `exec`: every thread the program ever has is traced from its first
//! instruction. The tracer waits only for the child's process group, so other children of
//! the test process are left alone. Syscalls are decoded on x86-64 only; elsewhere the
//! program runs traced but no `syncfs` is seen.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::ptrace;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// What a traced process ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal (this number) killed it.
    Signal(i32),
}

impl Exit {
    /// Exited with status 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

/// What happens to a `syncfs` or `sync` the tracer caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// It runs.
    Proceed,
    /// The thread stays stopped until it is killed.
    Freeze,
    /// It is skipped and fails with this errno.
    Fail(i32),
}

/// Called at the entry of a `sync` (`fd` None) or of a `syncfs(fd)` by thread `tid`.
pub(crate) type Hook = Arc<dyn Fn(i32, Option<u64>) -> Decision + Send + Sync>;

type Status = Arc<(Mutex<Option<Exit>>, Condvar)>;

/// A process running under the tracer; its stdout and stderr are collected.
pub struct Traced {
    pid: i32,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    status: Status,
    readers: Mutex<Vec<JoinHandle<()>>>,
    tracer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced")
            .field("pid", &self.pid)
            .field("exit", &self.try_wait())
            .finish()
    }
}

impl Traced {
    /// Its process id (also its process group).
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Kills it (`SIGKILL` to its whole process group).
    pub fn kill(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
    }

    /// How it ended, if it has.
    pub fn try_wait(&self) -> Option<Exit> {
        *self.status.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` for it to end.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Exit> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.status;
        let mut status = lock.lock().unwrap_or_else(|p| p.into_inner());
        while status.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            status = cv
                .wait_timeout(status, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let exit = *status;
        drop(status);
        self.join();
        exit
    }

    /// Waits for it to end (and for its output to be read to the end).
    pub fn wait(&self) -> Exit {
        loop {
            if let Some(exit) = self.wait_timeout(Duration::from_secs(3600)) {
                return exit;
            }
        }
    }

    fn join(&self) {
        if let Some(t) = self.tracer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        for r in self
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = r.join();
        }
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> Vec<u8> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.kill();
            let _ = self.wait_timeout(Duration::from_secs(30));
        }
    }
}

/// Starts `cmd` under the tracer (its stdin is null, its stdout and stderr collected).
pub(crate) fn spawn(cmd: &Command, hook: Hook) -> io::Result<Traced> {
    let mut wrapped = Command::new("/bin/sh");
    wrapped
        .arg("-c")
        .arg("kill -STOP $$ && exec \"$@\"")
        .arg("haul-powercut")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);

    let status: Status = Arc::default();
    let (tx, rx) = mpsc::channel();
    let tracer_status = status.clone();
    let tracer = std::thread::Builder::new()
        .name("powercut-tracer".into())
        .spawn(move || tracer_main(wrapped, hook, tx, tracer_status))?;
    let (pid, out, err) = match rx.recv() {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => {
            let _ = tracer.join();
            return Err(e);
        }
        Err(_) => {
            let _ = tracer.join();
            return Err(io::Error::other("the tracer thread died"));
        }
    };
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = vec![collect(out, stdout.clone()), collect(err, stderr.clone())];
    Ok(Traced {
        pid,
        stdout,
        stderr,
        status,
        readers: Mutex::new(readers.into_iter().flatten().collect()),
        tracer: Mutex::new(Some(tracer)),
    })
}

fn collect(
    pipe: Option<impl Read + Send + 'static>,
    into: Arc<Mutex<Vec<u8>>>,
) -> Option<JoinHandle<()>> {
    let mut pipe = pipe?;
    std::thread::Builder::new()
        .name("powercut-output".into())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => into
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
        .ok()
}

type Started = io::Result<(i32, Option<ChildStdout>, Option<ChildStderr>)>;

fn tracer_main(mut cmd: Command, hook: Hook, tx: mpsc::Sender<Started>, status: Status) {
    let finish = |exit: Exit| {
        let (lock, cv) = &*status;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(exit);
        cv.notify_all();
    };
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    let (out, err) = (child.stdout.take(), child.stderr.take());
    // The wrapper stops itself; seize it then, before it execs the program.
    loop {
        match waitpid(pid, Some(WaitPidFlag::WSTOPPED)) {
            Ok(WaitStatus::Stopped(..)) => break,
            Ok(WaitStatus::Exited(_, code)) => {
                let _ = tx.send(Ok((pid.as_raw(), out, err)));
                return finish(Exit::Code(code));
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                let _ = tx.send(Ok((pid.as_raw(), out, err)));
                return finish(Exit::Signal(sig as i32));
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                let _ = tx.send(Err(e.into()));
                return;
            }
        }
    }
    let options = ptrace::Options::PTRACE_O_TRACESYSGOOD
        | ptrace::Options::PTRACE_O_TRACECLONE
        | ptrace::Options::PTRACE_O_TRACEFORK
        | ptrace::Options::PTRACE_O_TRACEVFORK
        | ptrace::Options::PTRACE_O_TRACEEXEC
        | ptrace::Options::PTRACE_O_EXITKILL;
    if let Err(e) = ptrace::seize(pid, options) {
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        let _ = tx.send(Err(io::Error::other(format!(
            "cannot ptrace the child (needed to see its syncfs): {e}"
        ))));
        return;
    }
    let _ = tx.send(Ok((pid.as_raw(), out, err)));
    let _ = kill(pid, Signal::SIGCONT);
    let group = Pid::from_raw(-pid.as_raw());
    let mut exit = None;
    // Threads whose syscall was skipped, with the errno to return at its exit stop.
    let mut failing = std::collections::HashMap::new();
    loop {
        match waitpid(group, Some(WaitPidFlag::__WALL)) {
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
            Ok(WaitStatus::Exited(tid, code)) => {
                if tid == pid {
                    exit = Some(Exit::Code(code));
                }
            }
            Ok(WaitStatus::Signaled(tid, sig, _)) => {
                if tid == pid {
                    exit = Some(Exit::Signal(sig as i32));
                }
            }
            Ok(WaitStatus::PtraceSyscall(tid)) => {
                if let Some(errno) = failing.remove(&tid) {
                    set_result(tid, errno);
                    let _ = ptrace::syscall(tid, None);
                    continue;
                }
                match on_syscall(tid, &hook) {
                    Decision::Proceed => {
                        let _ = ptrace::syscall(tid, None);
                    }
                    Decision::Freeze => {}
                    Decision::Fail(errno) => {
                        skip_syscall(tid);
                        failing.insert(tid, errno);
                        let _ = ptrace::syscall(tid, None);
                    }
                }
            }
            Ok(WaitStatus::Stopped(tid, sig)) => {
                // A signal on its way: deliver it.
                let _ = ptrace::syscall(tid, Some(sig));
            }
            Ok(WaitStatus::PtraceEvent(tid, _, _)) => {
                let _ = ptrace::syscall(tid, None);
            }
            Ok(_) => {}
        }
    }
    drop(child);
    finish(exit.unwrap_or(Exit::Signal(Signal::SIGKILL as i32)));
}

/// At a syscall stop: what to do with it.
#[cfg(target_arch = "x86_64")]
fn on_syscall(tid: Pid, hook: &Hook) -> Decision {
    const ENOSYS: u64 = (-(nix::libc::ENOSYS as i64)) as u64;
    let Ok(regs) = ptrace::getregs(tid) else {
        return Decision::Proceed;
    };
    // At an entry stop the kernel has put -ENOSYS in rax.
    if regs.rax != ENOSYS {
        return Decision::Proceed;
    }
    match regs.orig_rax as i64 {
        nix::libc::SYS_syncfs => hook(tid.as_raw(), Some(regs.rdi)),
        nix::libc::SYS_sync => hook(tid.as_raw(), None),
        _ => Decision::Proceed,
    }
}

/// At an entry stop: makes the kernel skip the syscall (an invalid number).
#[cfg(target_arch = "x86_64")]
fn skip_syscall(tid: Pid) {
    if let Ok(mut regs) = ptrace::getregs(tid) {
        regs.orig_rax = u64::MAX;
        let _ = ptrace::setregs(tid, regs);
    }
}

/// At the exit stop of a skipped syscall: its result is `-errno`.
#[cfg(target_arch = "x86_64")]
fn set_result(tid: Pid, errno: i32) {
    if let Ok(mut regs) = ptrace::getregs(tid) {
        regs.rax = (-(errno as i64)) as u64;
        let _ = ptrace::setregs(tid, regs);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn on_syscall(_tid: Pid, _hook: &Hook) -> Decision {
    Decision::Proceed
}

#[cfg(not(target_arch = "x86_64"))]
fn skip_syscall(_tid: Pid) {}

#[cfg(not(target_arch = "x86_64"))]
fn set_result(_tid: Pid, _errno: i32) {}
