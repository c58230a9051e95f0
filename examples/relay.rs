//! `relay`: the cheapest io_uring TCP relay this kernel allows, used by
//! `loadtest/compare` (target `relay`, opt-in) as the floor cost of a
//! proxy hop: no HTTP parsing, no routing, nothing but bytes in and out.
//!
//! Each accepted client connection gets its own backend connection (1:1,
//! so HTTP keep-alive passes through untouched). Both sockets live in the
//! ring's registered file table (no fget/fput per operation), each has one
//! multishot receive armed on a provided-buffer ring (no submission and no
//! poll arm per read), and data goes out with `IORING_OP_SEND` from the
//! same buffer it arrived in (one copy in, one copy out). One thread, one
//! ring, `COOP_TASKRUN | SINGLE_ISSUER`, 256 buffers of 16 KiB. Sends to
//! one socket are kept in order: one in flight per destination, the rest
//! queued.
//!
//! ```text
//! cargo build --release --example relay
//! target/release/examples/relay 127.0.0.1:18044 127.0.0.1:18040
//! ```
//!
//! It is a measuring instrument for keep-alive traffic, not a product: no
//! timeouts, no limits, and connections to the backend are opened with a
//! blocking connect on accept (so `loadtest/compare` leaves it out of the
//! new-connection scenario).

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicU16, Ordering};

const BGID: u16 = 0;
const NBUF: u16 = 256;
const BUFSZ: usize = 16 * 1024;
const SLOTS: u32 = 8192;

const K_ACCEPT: u64 = 0;
const K_RECV: u64 = 1;
const K_SEND: u64 = 2;
const K_SHUTDOWN: u64 = 3;

fn ud(kind: u64, slot: u32, gen_: u32) -> u64 {
    kind | (u64::from(slot) << 8) | (u64::from(gen_) << 32)
}

/// The provided-buffer ring: `NBUF` entries of `{addr, len, bid, resv}`,
/// the tail being the `resv` field of entry 0.
struct BufRing {
    ring: *mut u8,
    bufs: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new() -> io::Result<Self> {
        let bytes = usize::from(NBUF) * 16;
        // SAFETY: anonymous private mapping, checked below.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut r = BufRing {
            ring: ring.cast(),
            bufs: vec![0u8; usize::from(NBUF) * BUFSZ],
            tail: 0,
        };
        for bid in 0..NBUF {
            r.put(bid);
        }
        r.publish();
        Ok(r)
    }

    fn buf(&self, bid: u16) -> *const u8 {
        self.bufs[usize::from(bid) * BUFSZ..].as_ptr()
    }

    /// Writes entry `tail` (not yet visible to the kernel).
    fn put(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (NBUF - 1));
        let addr = self.buf(bid) as u64;
        // SAFETY: idx < NBUF, the mapping holds NBUF 16-byte entries; the
        // kernel reads entries only up to the published tail.
        unsafe {
            let e = self.ring.add(idx * 16);
            e.cast::<u64>().write(addr);
            e.add(8).cast::<u32>().write(BUFSZ as u32);
            e.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the entries written so far visible.
    fn publish(&self) {
        // SAFETY: the tail is the u16 at byte 14 of the ring, shared with
        // the kernel; an atomic release store orders the entries before it.
        let tail = unsafe { &*self.ring.add(14).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

#[derive(Default)]
struct Slot {
    gen_: u32,
    open: bool,
    sending: bool,
    /// (buffer id, offset, length) waiting to go out on this socket.
    queue: VecDeque<(u16, u32, u32)>,
}

struct Relay {
    ring: IoUring,
    bufs: BufRing,
    slots: Vec<Slot>,
    free: Vec<u32>,
    listener: TcpListener,
    backend: SocketAddr,
}

impl Relay {
    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry points at memory owned by `self` (buffer
            // pool) that outlives the operation.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let e = opcode::Accept::new(
            types::Fd(self.listener.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .build()
        .user_data(K_ACCEPT);
        self.push(e)
    }

    fn arm_recv(&mut self, slot: u32) -> io::Result<()> {
        let g = self.slots[slot as usize].gen_;
        let e = opcode::RecvMulti::new(types::Fixed(slot), BGID)
            .build()
            .user_data(ud(K_RECV, slot, g));
        self.push(e)
    }

    fn start_send(&mut self, slot: u32) -> io::Result<()> {
        let s = &mut self.slots[slot as usize];
        let Some(&(bid, off, len)) = s.queue.front() else {
            s.sending = false;
            return Ok(());
        };
        s.sending = true;
        let g = s.gen_;
        // SAFETY: off < BUFSZ within buffer `bid`.
        let ptr = unsafe { self.bufs.buf(bid).add(off as usize) };
        let e = opcode::Send::new(types::Fixed(slot), ptr, len)
            .build()
            .user_data(ud(K_SEND, slot, g));
        self.push(e)
    }

    fn accepted(&mut self, fd: i32) -> io::Result<()> {
        // SAFETY: `fd` was just returned by accept and is owned here.
        let client = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let Ok(up) = TcpStream::connect(self.backend) else {
            return Ok(()); // backend refused: drop the client
        };
        client.set_nodelay(true)?;
        up.set_nodelay(true)?;
        let Some(a) = self.free.pop() else {
            return Ok(()); // table full: drop the client
        };
        let b = a + 1;
        let fds = [client.into_raw_fd(), up.into_raw_fd()];
        self.ring.submitter().register_files_update(a, &fds)?;
        // The table holds its own references now.
        for fd in fds {
            // SAFETY: both fds are owned here and registered above.
            unsafe { libc::close(fd) };
        }
        for s in [a, b] {
            let slot = &mut self.slots[s as usize];
            slot.gen_ = slot.gen_.wrapping_add(1) & 0xff_ffff;
            slot.open = true;
            slot.sending = false;
            slot.queue.clear();
            self.arm_recv(s)?;
        }
        Ok(())
    }

    fn close_pair(&mut self, slot: u32) -> io::Result<()> {
        let a = slot & !1;
        if !self.slots[a as usize].open {
            return Ok(());
        }
        for s in [a, a + 1] {
            let st = &mut self.slots[s as usize];
            st.open = false;
            st.gen_ = st.gen_.wrapping_add(1) & 0xff_ffff;
            while let Some((bid, _, _)) = st.queue.pop_front() {
                self.bufs.put(bid);
            }
        }
        // Shut both sockets first: that ends the multishot receives, which
        // hold references to the files; then empty the table slots.
        for s in [a, a + 1] {
            let e = opcode::Shutdown::new(types::Fixed(s), libc::SHUT_RDWR)
                .build()
                .user_data(ud(K_SHUTDOWN, s, 0));
            self.push(e)?;
        }
        self.ring.submit()?;
        self.ring.submitter().register_files_update(a, &[-1, -1])?;
        self.free.push(a);
        Ok(())
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) -> io::Result<()> {
        let kind = user_data & 0xff;
        if kind == K_ACCEPT {
            if res >= 0 {
                self.accepted(res)?;
            }
            return self.arm_accept();
        }
        let slot = ((user_data >> 8) & 0xff_ffff) as u32;
        let g = (user_data >> 32) as u32;
        let current = self.slots[slot as usize].open && self.slots[slot as usize].gen_ == g;
        match kind {
            K_RECV => {
                let bid = cqueue::buffer_select(flags);
                if !current {
                    if let Some(bid) = bid {
                        self.bufs.put(bid);
                    }
                    return Ok(());
                }
                match (res, bid) {
                    (n, Some(bid)) if n > 0 => {
                        let peer = slot ^ 1;
                        self.slots[peer as usize]
                            .queue
                            .push_back((bid, 0, n as u32));
                        if !self.slots[peer as usize].sending {
                            self.start_send(peer)?;
                        }
                        if !cqueue::more(flags) {
                            self.arm_recv(slot)?;
                        }
                    }
                    (r, _) if r == -libc::ENOBUFS => self.arm_recv(slot)?,
                    (_, bid) => {
                        if let Some(bid) = bid {
                            self.bufs.put(bid);
                        }
                        self.close_pair(slot)?;
                    }
                }
            }
            K_SEND => {
                if !current {
                    return Ok(());
                }
                if res < 0 {
                    return self.close_pair(slot);
                }
                let s = &mut self.slots[slot as usize];
                let front = s.queue.front_mut().expect("a send in flight");
                if (res as u32) < front.2 {
                    front.1 += res as u32;
                    front.2 -= res as u32;
                } else {
                    let (bid, _, _) = s.queue.pop_front().expect("a send in flight");
                    self.bufs.put(bid);
                }
                self.start_send(slot)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn run(&mut self) -> io::Result<()> {
        self.arm_accept()?;
        let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            done.clear();
            done.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(u, r, f) in &done {
                self.complete(u, r, f)?;
            }
            self.bufs.publish();
        }
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: relay LISTEN_ADDR BACKEND_ADDR");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN_ADDR: ip:port");
    let backend: SocketAddr = args[2].parse().expect("BACKEND_ADDR: ip:port");
    let ring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .build(4096)?;
    ring.submitter().register_files_sparse(SLOTS)?;
    let bufs = BufRing::new()?;
    // SAFETY: the ring memory lives in `bufs`, as long as the io_uring.
    unsafe {
        ring.submitter()
            .register_buf_ring(bufs.ring as u64, NBUF, BGID)?;
    }
    // The same accept backlog as the proxies it is compared with.
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&listen.into())?;
    sock.listen(4096)?;
    let listener: TcpListener = sock.into();
    eprintln!("relay: {listen} -> {backend}");
    let mut relay = Relay {
        ring,
        bufs,
        slots: (0..SLOTS).map(|_| Slot::default()).collect(),
        free: (0..SLOTS).step_by(2).rev().collect(),
        listener,
        backend,
    };
    relay.run()
}
