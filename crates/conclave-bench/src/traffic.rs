//! Traffic in a bench room: S senders each send K messages of B bytes (as
//! fast as the connection takes them, or R per second), every member counts
//! what it receives by sequence number, and latency is measured from the
//! send to the receipt at each member (one process, one monotonic clock).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use conclave_client::engine::{Applied, HistoryKind, Item, Meta};
use conclave_client::Chat;
use conclave_proto::{EntryBody, Event, Request, Response, Seq};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lean::Seen;
use crate::room::Room;

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Senders: members `0..senders` of the room.
    pub senders: usize,
    /// Messages per sender.
    pub messages: usize,
    /// Plaintext bytes per message.
    pub size: usize,
    /// Messages per second per sender; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Members after the senders that keep what they receive and decrypt it
    /// after the timed window.
    pub decryptors: usize,
    /// Give up this long after the start.
    pub max: Duration,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Deliveries expected: senders × messages × (members − 1).
    pub expected: u64,
    /// Deliveries counted.
    pub delivered: u64,
    /// Messages missing at some member (gaps in a sender's numbers, or never arrived).
    pub lost: u64,
    /// Entries that arrived out of order (sequence number not increasing, or a
    /// sender's numbers going back).
    pub out_of_order: u64,
    /// Sends the server acknowledged.
    pub acked: u64,
    /// Sends the server refused, and the first reason.
    pub refused: u64,
    /// The first refusal.
    pub first_error: Option<String>,
    /// Members disconnected during the run.
    pub disconnected: u64,
    /// From the first send to the last delivery.
    pub elapsed: Duration,
    /// From the first send to the last send.
    pub send_elapsed: Duration,
    /// From the first send to the last acknowledgement.
    pub ack_elapsed: Duration,
    /// (received at, latency) in nanoseconds since the start, per delivery.
    pub samples: Vec<(u64, u64)>,
    /// Messages decrypted after the run by the decrypting members, and how
    /// many of those did not decrypt to what was sent.
    pub decrypted: u64,
    /// Decryption failures or wrong plaintexts.
    pub decrypt_failed: u64,
    /// Server CPU seconds over the run, when known.
    pub server_cpu: Option<f64>,
    /// The load generator's own CPU seconds over the run.
    pub loadgen_cpu: Option<f64>,
    /// Milliseconds the host took from each CPU over the run, when known.
    pub host_steal_ms: Option<Vec<u64>>,
}

/// The plaintext of message `k` of sender `s`, padded to `size` bytes.
pub fn plaintext(s: usize, k: usize, size: usize) -> String {
    let mut text = format!("S{s} K{k} ");
    while text.len() < size {
        text.push('x');
    }
    text
}

struct Shared {
    start: Instant,
    /// Send time of message k of sender s at [s * messages + k], ns since start + 1.
    sent_at: Vec<AtomicU64>,
    delivered: AtomicU64,
    last_delivery: AtomicU64,
    messages: usize,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

#[derive(Default)]
struct MemberStats {
    delivered: u64,
    lost: u64,
    out_of_order: u64,
    samples: Vec<(u64, u64)>,
    kept: Vec<(Seq, u64, String, Vec<u8>)>,
    disconnected: bool,
}

/// Senders by username, looked up once per delivery: a scan of a few short
/// names costs less than hashing one, so a map is used only for many.
enum Senders {
    Few(Vec<String>),
    Many(HashMap<String, usize>),
}

impl Senders {
    /// Scanned below this many senders.
    const SCAN: usize = 16;

    fn new(names: Vec<String>) -> Self {
        if names.len() < Self::SCAN {
            Senders::Few(names)
        } else {
            Senders::Many(names.into_iter().enumerate().map(|(s, u)| (u, s)).collect())
        }
    }

    fn len(&self) -> usize {
        match self {
            Senders::Few(v) => v.len(),
            Senders::Many(m) => m.len(),
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        match self {
            Senders::Few(v) => v.iter().position(|u| u == name),
            Senders::Many(m) => m.get(name).copied(),
        }
    }
}

/// Room for every latency sample member `me` will take, touched now so that
/// the timed window does not pay its page faults.
fn sample_room(me: &str, senders: &Senders, messages: usize) -> Vec<(u64, u64)> {
    let others = senders.len() - usize::from(senders.index(me).is_some());
    let mut samples = vec![(0, 0); others * messages];
    samples.clear();
    samples
}

/// One member's count: order, gaps and latency of what it receives.
struct Counter {
    /// This member's index among the senders, if it is one.
    me: Option<usize>,
    shared: Arc<Shared>,
    senders: Arc<Senders>,
    next_k: Vec<usize>,
    last_seq: Seq,
    keep: bool,
    st: MemberStats,
}

impl Counter {
    /// `samples`: from [`sample_room`], made before the clock starts.
    fn new(
        me: &str,
        shared: Arc<Shared>,
        senders: Arc<Senders>,
        head_seq: Seq,
        keep: bool,
        samples: Vec<(u64, u64)>,
    ) -> Self {
        let next_k = vec![0; senders.len()];
        let me = senders.index(me);
        let st = MemberStats { samples, ..MemberStats::default() };
        Counter { me, shared, senders, next_k, last_seq: head_seq, keep, st }
    }

    /// A message received `now` (nanoseconds since the start).
    fn message(
        &mut self,
        now: u64,
        seq: Seq,
        time_ms: u64,
        sender: &str,
        client_msg_id: u64,
        ciphertext: &[u8],
    ) {
        if seq <= self.last_seq {
            self.st.out_of_order += 1;
        }
        self.last_seq = self.last_seq.max(seq);
        let Some(s) = self.senders.index(sender) else { return };
        if Some(s) == self.me {
            return;
        }
        let k = client_msg_id.saturating_sub(1) as usize;
        let shared = &self.shared;
        if k >= shared.messages {
            return;
        }
        let sent = shared.sent_at[s * shared.messages + k].load(Ordering::Acquire);
        self.st.samples.push((now, now.saturating_sub(sent.saturating_sub(1))));
        match k.cmp(&self.next_k[s]) {
            std::cmp::Ordering::Equal => {}
            std::cmp::Ordering::Greater => self.st.lost += (k - self.next_k[s]) as u64,
            std::cmp::Ordering::Less => self.st.out_of_order += 1,
        }
        self.next_k[s] = self.next_k[s].max(k + 1);
        self.st.delivered += 1;
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        shared.last_delivery.fetch_max(now, Ordering::Relaxed);
        if self.keep {
            self.st.kept.push((seq, time_ms, sender.to_owned(), ciphertext.to_vec()));
        }
    }

    /// Whatever a sender's numbers stopped short of never arrived.
    fn finish(mut self) -> MemberStats {
        for (s, n) in self.next_k.iter().enumerate() {
            if self.me != Some(s) {
                self.st.lost += (self.shared.messages - n) as u64;
            }
        }
        self.st
    }
}

/// Runs the load in `room`. Senders' messages are encrypted (real MLS, with
/// each sender's own client state) before the clock starts.
/// `on_start` learns the instant the clock started (samples are measured from it);
/// with a `gate`, the clock starts once every run sharing it has encrypted.
pub async fn run(
    room: Room,
    load: Load,
    cpu: impl Fn() -> Option<f64>,
    on_start: Option<tokio::sync::oneshot::Sender<Instant>>,
    gate: Option<Arc<tokio::sync::Barrier>>,
) -> Result<(Outcome, Room)> {
    let Room { name, mut chats, plain, mut events, usernames, head_seq } = room;
    let members = usernames.len();
    let senders = load.senders.min(chats.len());
    let k_total = load.messages;
    let mut ciphertexts = Vec::with_capacity(senders);
    let bar = crate::progress((senders * k_total) as u64, "encrypting");
    for (s, chat) in chats.iter_mut().enumerate().take(senders) {
        let mut mine = Vec::with_capacity(k_total);
        for k in 0..k_total {
            mine.push(chat.engine_mut().encrypt(&name, plaintext(s, k, load.size).as_bytes())?);
            bar.inc(1);
        }
        ciphertexts.push(mine);
    }
    bar.finish_and_clear();
    let sender_names: Vec<String> = usernames.iter().take(senders).cloned().collect();
    let sender_index = Arc::new(Senders::new(sender_names));

    // One per member, in the order the member tasks are made below.
    let mut sample_rooms =
        usernames.iter().map(|u| sample_room(u, &sender_index, k_total)).collect::<Vec<_>>().into_iter();

    if let Some(gate) = gate {
        gate.wait().await;
    }
    let shared = Arc::new(Shared {
        start: Instant::now(),
        sent_at: (0..senders * k_total).map(|_| AtomicU64::new(0)).collect(),
        delivered: AtomicU64::new(0),
        last_delivery: AtomicU64::new(0),
        messages: k_total,
    });
    let stop = CancellationToken::new();
    if let Some(tx) = on_start {
        let _ = tx.send(shared.start);
    }

    // Members: count, check order, time. Full clients read their
    // connection's event stream; lean members parse frames in place.
    let mut member_tasks = Vec::with_capacity(members);
    for (i, mut rx) in events.drain(..).enumerate() {
        let keep = i >= senders && i < senders + load.decryptors;
        let room = sample_rooms.next().unwrap_or_default();
        let mut c = Counter::new(&usernames[i], shared.clone(), sender_index.clone(), head_seq, keep, room);
        let stop = stop.clone();
        member_tasks.push(tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    ev = rx.recv() => ev,
                };
                let Some(ev) = ev else {
                    c.st.disconnected = true;
                    break;
                };
                let Event::Entry { entry, .. } = ev else { continue };
                if let EntryBody::Message { client_msg_id, ciphertext } = &entry.body {
                    c.message(
                        c.shared.now(),
                        entry.seq,
                        entry.time_ms,
                        &entry.sender,
                        *client_msg_id,
                        ciphertext,
                    );
                }
            }
            (c.finish(), None)
        }));
    }
    let full = member_tasks.len();
    for (j, mut lean) in plain.into_iter().enumerate() {
        let room = sample_rooms.next().unwrap_or_default();
        let mut c =
            Counter::new(&usernames[full + j], shared.clone(), sender_index.clone(), head_seq, false, room);
        let stop = stop.clone();
        member_tasks.push(tokio::spawn(async move {
            let mut closed = false;
            let start = c.shared.start;
            let read = lean.for_each(|seen, read_at| match seen {
                Seen::Message { seq, sender, client_msg_id, ciphertext } => {
                    let now = read_at.saturating_duration_since(start).as_nanos() as u64;
                    c.message(now, seq, 0, sender, client_msg_id, ciphertext);
                    true
                }
                Seen::Other => true,
                Seen::Closed => {
                    closed = true;
                    false
                }
            });
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                r = read => closed |= r.is_err(),
            }
            c.st.disconnected |= closed;
            (c.finish(), Some(lean))
        }));
    }

    // Senders: pipelined sends, acknowledgements collected in order.
    let cpu_before = cpu();
    let own_before = crate::target::cpu_secs(std::process::id());
    let steal_before = crate::target::host_steal_ms();
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack = Arc::new(AtomicU64::new(0));
    let last_send = Arc::new(AtomicU64::new(0));
    let senders_done = Arc::new(AtomicUsize::new(0));
    let mut sender_tasks = Vec::new();
    let mut ack_tasks = Vec::new();
    let mut sending: Vec<Chat> = chats.drain(..senders).collect();
    for (s, mine) in ciphertexts.into_iter().enumerate() {
        let chat = sending.remove(0);
        let (tx, mut rx) = mpsc::unbounded_channel::<conclave_client::Answer>();
        let (acked, last_ack, shared2) = (acked.clone(), last_ack.clone(), shared.clone());
        ack_tasks.push(tokio::spawn(async move {
            let mut refused = 0u64;
            let mut first_error = None;
            while let Some(answer) = rx.recv().await {
                match answer.answer().await {
                    Ok(Response::Accepted { .. }) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        last_ack.fetch_max(shared2.now(), Ordering::Relaxed);
                    }
                    Ok(other) => {
                        refused += 1;
                        first_error.get_or_insert(format!("unexpected answer {other:?}"));
                    }
                    Err(e) => {
                        refused += 1;
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            (refused, first_error)
        }));
        let (shared, last_send, done, name) =
            (shared.clone(), last_send.clone(), senders_done.clone(), name.clone());
        let rate = load.rate;
        sender_tasks.push(tokio::spawn(async move {
            // Every sender's ticks fall on the same instants (the clock's
            // start plus whole periods), so paced senders send together. An
            // interval started by each task itself would begin a few µs
            // apart, and tokio's timer fires in whole milliseconds: in some
            // runs the ten would split over two ticks, a millisecond apart.
            let mut tick = rate.map(|r| {
                let start = tokio::time::Instant::from_std(shared.start);
                let mut i = tokio::time::interval_at(start, Duration::from_secs_f64(1.0 / r.max(0.001)));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                i
            });
            for (k, ciphertext) in mine.into_iter().enumerate() {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                shared.sent_at[s * shared.messages + k].store(shared.now() + 1, Ordering::Release);
                let req = Request::Send { room: name.clone(), client_msg_id: k as u64 + 1, ciphertext };
                match chat.connection().start_request(req).await {
                    Ok(answer) => {
                        let _ = tx.send(answer);
                    }
                    Err(_) => break,
                }
            }
            last_send.fetch_max(shared.now(), Ordering::Relaxed);
            done.fetch_add(1, Ordering::Relaxed);
            drop(tx);
            chat
        }));
    }

    // Wait for everything to arrive, or for progress to stop.
    let expected = (senders * k_total * (members - 1)) as u64;
    let bar = crate::progress(expected, "delivering");
    let mut last_seen = 0;
    let mut since_progress = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let d = shared.delivered.load(Ordering::Relaxed);
        bar.set_position(d);
        if d >= expected && acked.load(Ordering::Relaxed) as usize >= senders * k_total {
            break;
        }
        if d != last_seen {
            last_seen = d;
            since_progress = Instant::now();
        }
        let all_sent = senders_done.load(Ordering::Relaxed) == senders;
        if (all_sent && since_progress.elapsed() > Duration::from_secs(5))
            || shared.start.elapsed() > load.max
        {
            break;
        }
    }
    bar.finish_and_clear();
    let cpu_after = cpu();
    let own_after = crate::target::cpu_secs(std::process::id());
    let steal_after = crate::target::host_steal_ms();
    stop.cancel();

    let mut out = Outcome { expected, ..Outcome::default() };
    let mut returned = Vec::new();
    for t in sender_tasks {
        returned.push(t.await?);
    }
    for t in ack_tasks {
        let (refused, first) = t.await?;
        out.refused += refused;
        if out.first_error.is_none() {
            out.first_error = first;
        }
    }
    let mut kept_by_member = Vec::new();
    let mut plain = Vec::new();
    for (i, t) in member_tasks.into_iter().enumerate() {
        let (st, lean) = t.await?;
        plain.extend(lean);
        out.delivered += st.delivered;
        out.lost += st.lost;
        out.out_of_order += st.out_of_order;
        out.disconnected += u64::from(st.disconnected);
        out.samples.extend(st.samples);
        if !st.kept.is_empty() {
            kept_by_member.push((i, st.kept));
        }
    }
    out.acked = acked.load(Ordering::Relaxed);
    out.elapsed = Duration::from_nanos(shared.last_delivery.load(Ordering::Relaxed));
    out.send_elapsed = Duration::from_nanos(last_send.load(Ordering::Relaxed));
    out.ack_elapsed = Duration::from_nanos(last_ack.load(Ordering::Relaxed));
    out.server_cpu = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    out.loadgen_cpu = own_before.zip(own_after).map(|(a, b)| b - a);
    out.host_steal_ms = crate::target::steal_between(steal_before, steal_after);

    // Decrypt what the decrypting members kept, with their real client state.
    returned.extend(chats);
    let mut chats = returned;
    let bar = crate::progress(kept_by_member.iter().map(|(_, k)| k.len() as u64).sum(), "decrypting");
    for (i, kept) in kept_by_member {
        let chat = &mut chats[i];
        for (seq, time_ms, sender, ciphertext) in kept {
            let meta = Meta {
                seq,
                time_ms,
                sender: sender.clone(),
                sender_display: sender.clone(),
                kind: HistoryKind::Message,
                text: None,
                own_client_msg_id: None,
            };
            let s = sender_index.index(&sender).unwrap_or(usize::MAX);
            match chat.engine_mut().apply(&name, &meta, Item::Message(&ciphertext)) {
                Ok(Applied::Message { text, sender_identity })
                    if sender_identity.starts_with(&format!("{sender}:"))
                        && text.starts_with(&format!("S{s} K")) =>
                {
                    out.decrypted += 1
                }
                _ => out.decrypt_failed += 1,
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok((out, Room { name, chats, plain, events: Vec::new(), usernames, head_seq }))
}
