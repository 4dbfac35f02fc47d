//! The big lists (virtual disks, VMs) and single gets from them, served from a cache.
//!
//! Building every view on the node and encoding it for each request made the VM list ~9 x and
//! the virtual disk list ~30 x slower than nginx serving the same bytes. Here each list is
//! fetched from the node once per change and kept (typed, sorted) together with the encoded
//! pages and items handed out so far; a request that finds them costs a policy check and a
//! copy of a reference-counted buffer.
//!
//! When a kept list is still right: the node's change counter
//! ([`control::Controller::generation`]) is the one it was fetched under (any mutation, from any
//! front end, moves it), and it is younger than [`FRESH`] — counters such as `used_bytes` and VM
//! statistics move without a mutation, and so do VMs whose guest powered itself off. A
//! controller that does not count changes gets no caching. While one request re-fetches a list
//! that only aged, the others get the aged copy (at most [`AGED_MAX`] old) instead of waiting.
//!
//! The statistics sampler takes its VM and virtual disk lists from here too (once a second,
//! like [`FRESH`]): a list it fetched serves the requests of the next second, and a list a
//! request fetched since its last tick serves the sampler, so the node answers each list about
//! once a second instead of once for each of them.
//!
//! What it must never do: answer without the caller's role check and input validation (both
//! run on every request, hit or miss), or keep unbounded data (one list per kind, at most
//! [`MAX_PAGES`] encoded pages of it).

use crate::http::{self as h, Resp};
use crate::routes::R;
use crate::state::{Caller, State};
use bytes::Bytes;
use control::{Actor, ControlError, Controller, Reply, Request, VdiskView, Via, VmView};
use http::StatusCode;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a kept list may be served when nothing changed through the controller.
pub const FRESH: Duration = Duration::from_secs(1);
/// While one request fetches an aged list (no change, only older than [`FRESH`]), the others
/// are answered from the aged one rather than queueing behind the fetch (which, for thousands
/// of items on a busy node, took tens of milliseconds and put every request of that moment in
/// the p99). Never past this age, and never once the change counter moved.
pub const AGED_MAX: Duration = Duration::from_secs(5);
/// Encoded pages kept per list (distinct limit/cursor pairs); beyond that the pages start over.
pub const MAX_PAGES: usize = 64;

/// One kept list, sorted by name.
pub(crate) struct Kept<T> {
    generation: u64,
    at: Instant,
    items: Vec<T>,
    /// Each item encoded on first use (single gets).
    encoded: Vec<OnceLock<Bytes>>,
    pages: Mutex<HashMap<(usize, Option<String>), Bytes>>,
}

impl<T: Serialize> Kept<T> {
    fn new(generation: u64, mut items: Vec<T>, key: fn(&T) -> &str) -> Kept<T> {
        // The node answers sorted; sort only if it did not.
        if !items.windows(2).all(|w| key(&w[0]) <= key(&w[1])) {
            items.sort_by(|a, b| key(a).cmp(key(b)));
        }
        Kept {
            generation,
            at: Instant::now(),
            encoded: (0..items.len()).map(|_| OnceLock::new()).collect(),
            items,
            pages: Mutex::new(HashMap::new()),
        }
    }

    fn fresh(&self, generation: Option<u64>, ages: &Ages) -> bool {
        generation == Some(self.generation) && self.at.elapsed() < ages.fresh
    }

    /// Good enough to answer while another request is fetching a newer copy: nothing changed
    /// through the controller since, and it is not much older than [`FRESH`].
    fn servable_while_refreshing(&self, generation: Option<u64>, ages: &Ages) -> bool {
        generation == Some(self.generation) && self.at.elapsed() < ages.aged_max
    }

    /// The list, sorted by name.
    pub(crate) fn items(&self) -> &[T] {
        &self.items
    }

    /// When the node answered it: the statistics sampler turns counter deltas between two
    /// lists into rates over the time between them.
    pub(crate) fn fetched_at(&self) -> Instant {
        self.at
    }

    /// One page: items after `cursor`, at most `limit`, and the next page's cursor (null on
    /// the last page) — the same cut as [`h::page_by`].
    fn page(&self, key: fn(&T) -> &str, limit: usize, cursor: Option<&str>) -> Bytes {
        let k = (limit, cursor.map(str::to_string));
        if let Some(b) = self.pages.lock().get(&k) {
            return b.clone();
        }
        let b = Bytes::from(encode_page(&self.items, key, limit, cursor));
        let mut pages = self.pages.lock();
        if pages.len() >= MAX_PAGES {
            pages.clear();
        }
        pages.insert(k, b.clone());
        b
    }

    fn item(&self, key: fn(&T) -> &str, name: &str) -> Option<Bytes> {
        let i = self.items.binary_search_by(|it| key(it).cmp(name)).ok()?;
        Some(
            self.encoded[i]
                .get_or_init(|| {
                    serde_json::to_vec(&self.items[i])
                        .unwrap_or_default()
                        .into()
                })
                .clone(),
        )
    }
}

#[derive(Serialize)]
struct PageOut<'a, T> {
    items: &'a [T],
    next_cursor: Option<&'a str>,
}

/// `{"items":[..],"next_cursor":..}` for a sorted list.
fn encode_page<T: Serialize>(
    items: &[T],
    key: fn(&T) -> &str,
    limit: usize,
    cursor: Option<&str>,
) -> Vec<u8> {
    let start = cursor.map_or(0, |c| items.partition_point(|i| key(i) <= c));
    let end = start.saturating_add(limit).min(items.len());
    let next = (end < items.len() && end > start).then(|| key(&items[end - 1]));
    serde_json::to_vec(&PageOut {
        items: &items[start..end],
        next_cursor: next,
    })
    .unwrap_or_default()
}

/// How old a kept list may be: [`FRESH`] and [`AGED_MAX`] (tests stretch them so that a slow
/// machine cannot age a list between two steps).
#[derive(Debug, Clone, Copy)]
struct Ages {
    fresh: Duration,
    aged_max: Duration,
}

const AGES: Ages = Ages {
    fresh: FRESH,
    aged_max: AGED_MAX,
};

/// What a caller may take from a kept list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// A request: a fresh list; while someone else fetches, an aged one will do.
    Fresh,
    /// The statistics sampler: a fresh list fetched after the one it sampled last (fetched at
    /// the given instant), so that its rates cover a real interval. It waits for a fetch under
    /// way rather than start another.
    FetchedAfter(Option<Instant>),
}

/// One kind of list: the kept copy and a lock so that a miss under load asks the node once.
struct Slot<T> {
    kept: RwLock<Option<Arc<Kept<T>>>>,
    fill: tokio::sync::Mutex<()>,
    /// Lists asked of the node, by requests and the sampler together.
    fetches: std::sync::atomic::AtomicU64,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            kept: RwLock::new(None),
            fill: tokio::sync::Mutex::new(()),
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl<T: Serialize> Slot<T> {
    fn current(&self, generation: Option<u64>, ages: &Ages, need: Need) -> Option<Arc<Kept<T>>> {
        self.kept
            .read()
            .as_ref()
            .filter(|k| k.fresh(generation, ages))
            .filter(|k| match need {
                Need::Fresh => true,
                Need::FetchedAfter(last) => last.is_none_or(|t| k.at > t),
            })
            .cloned()
    }

    fn aged(&self, generation: Option<u64>, ages: &Ages) -> Option<Arc<Kept<T>>> {
        self.kept
            .read()
            .as_ref()
            .filter(|k| k.servable_while_refreshing(generation, ages))
            .cloned()
    }

    /// The list as the node has it now (or kept since the last change, briefly), fetched with
    /// `fetch` when nothing kept will do. A request's caller has checked the role and the
    /// request already. Requests and the sampler share what is kept, so that together they ask
    /// the node about once per [`FRESH`] rather than once each.
    async fn get<F, Fut>(
        &self,
        cache: &ListCache,
        ctl: &dyn Controller,
        need: Need,
        key: fn(&T) -> &str,
        fetch: F,
    ) -> Result<Arc<Kept<T>>, ControlError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, ControlError>>,
    {
        let ages = &cache.ages;
        let before = cache.generation(ctl);
        if let Some(k) = self.current(before, ages, need) {
            return Ok(k);
        }
        // With nothing to keep, every caller asks the node (no queueing behind one another).
        let _filling = match before {
            Some(_) => match self.fill.try_lock() {
                Ok(g) => Some(g),
                // Someone is fetching already: a request is served a list that only aged
                // meanwhile; after a change, and for the sampler, wait for that fetch (a caller
                // must see its own change; the sampler then takes what it brought).
                Err(_) => match (need, self.aged(before, ages)) {
                    (Need::Fresh, Some(k)) => return Ok(k),
                    _ => Some(self.fill.lock().await),
                },
            },
            None => None,
        };
        // Read before asking: a change that lands meanwhile moves the counter past it, so the
        // list kept here is never taken for one fetched after that change.
        let generation = cache.generation(ctl);
        if let Some(k) = self.current(generation, ages, need) {
            return Ok(k);
        }
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let items = fetch().await?;
        let kept = Arc::new(Kept::new(generation.unwrap_or(0), items, key));
        if generation.is_some() {
            *self.kept.write() = Some(kept.clone());
        }
        Ok(kept)
    }
}

/// The cached lists of one server, shared by its requests and its statistics sampler.
pub struct ListCache {
    enabled: bool,
    ages: Ages,
    vdisks: Slot<VdiskView>,
    vms: Slot<VmView>,
}

impl ListCache {
    pub fn new(enabled: bool) -> ListCache {
        ListCache {
            enabled,
            ages: AGES,
            vdisks: Slot::default(),
            vms: Slot::default(),
        }
    }

    /// The node's change counter, or none when caching is off.
    fn generation(&self, ctl: &dyn Controller) -> Option<u64> {
        self.enabled.then(|| ctl.generation()).flatten()
    }

    /// The VM list for the statistics sampler (see [`Need::FetchedAfter`]): this node's own
    /// (see [`internal_fetch`]).
    pub(crate) async fn sampled_vms(
        &self,
        ctl: &dyn Controller,
        after: Option<Instant>,
    ) -> Result<Arc<Kept<VmView>>, ControlError> {
        if ctl.spans_members() {
            let items = internal_fetch(ctl, Via::Internal, Request::VmList, take_vms).await?;
            return Ok(Arc::new(Kept::new(0, items, vm_key)));
        }
        let need = Need::FetchedAfter(after);
        let fetch = || internal_fetch(ctl, Via::Api, Request::VmList, take_vms);
        self.vms.get(self, ctl, need, vm_key, fetch).await
    }

    /// The virtual disk list for the statistics sampler (see [`Need::FetchedAfter`]): this
    /// node's own (see [`internal_fetch`]).
    pub(crate) async fn sampled_vdisks(
        &self,
        ctl: &dyn Controller,
        after: Option<Instant>,
    ) -> Result<Arc<Kept<VdiskView>>, ControlError> {
        if ctl.spans_members() {
            let items = internal_fetch(ctl, Via::Internal, Request::VdiskList, take_vdisks).await?;
            return Ok(Arc::new(Kept::new(0, items, vdisk_key)));
        }
        let need = Need::FetchedAfter(after);
        let fetch = || internal_fetch(ctl, Via::Api, Request::VdiskList, take_vdisks);
        self.vdisks.get(self, ctl, need, vdisk_key, fetch).await
    }

    /// Lists asked of the node so far (VMs, virtual disks), by requests and the sampler.
    #[cfg(test)]
    pub(crate) fn fetches(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.vms.fetches.load(Relaxed),
            self.vdisks.fetches.load(Relaxed),
        )
    }
}

/// A list asked of the node by the api itself (the sampler), not on behalf of a caller. To be
/// shared with requests it is asked as the API asks (`Via::Api`), which only a node whose
/// lists name no other member's items ([`Controller::spans_members`]) does: then it is this
/// node's own. In a cluster the sampler asks for this node's own (`Via::Internal`) and keeps
/// it to itself: every member's lists each second would cost each member a list per page, and
/// the time spent asking them would skew the rates.
async fn internal_fetch<T>(
    ctl: &dyn Controller,
    via: Via,
    req: Request,
    take: fn(Reply) -> Option<Vec<T>>,
) -> Result<Vec<T>, ControlError> {
    let action = req.action();
    let actor = Actor {
        via,
        ..Actor::internal("stats")
    };
    take(ctl.execute(actor, req).await?).ok_or_else(|| {
        ControlError::internal(format!("the node answered {action} with something else"))
    })
}

/// A list asked of the node for a caller (checked already).
async fn caller_fetch<T>(
    st: &State,
    c: &Caller,
    req: Request,
    take: fn(Reply) -> Option<Vec<T>>,
) -> Result<Vec<T>, ControlError> {
    let action = req.action();
    take(st.run(c, req).await?).ok_or_else(|| {
        ControlError::internal(format!("the node answered {action} with something else"))
    })
}

fn vdisk_key(v: &VdiskView) -> &str {
    &v.name
}
fn vm_key(v: &VmView) -> &str {
    &v.name
}
fn take_vdisks(r: Reply) -> Option<Vec<VdiskView>> {
    match r {
        Reply::Vdisks(v) => Some(v),
        _ => None,
    }
}
fn take_vms(r: Reply) -> Option<Vec<VmView>> {
    match r {
        Reply::Vms(v) => Some(v),
        _ => None,
    }
}

fn ok(b: Bytes) -> Resp {
    h::with_type(StatusCode::OK, "application/json", b)
}

/// Answer `GET /vdisks`, `/vms` (always) and `/vdisks/{name}`, `/vms/{name}` (when the kept
/// list has the name; otherwise `None` and the request goes to the node, which says why it is
/// missing).
pub(crate) async fn serve(
    st: &State,
    r: R,
    params: &[String],
    q: &[(String, String)],
    c: &Caller,
) -> Result<Option<Resp>, ControlError> {
    let cache = &st.lists;
    let name = || params.first().cloned().unwrap_or_default();
    match r {
        R::Vdisks | R::Vms => {
            let (limit, cursor) = h::paging(q)?;
            let cur = cursor.as_deref();
            let page = if r == R::Vdisks {
                let req = Request::VdiskList;
                st.precheck(c, &req)?;
                let k = vdisks_for(st, c).await?;
                k.page(vdisk_key, limit, cur)
            } else {
                let req = Request::VmList;
                st.precheck(c, &req)?;
                let k = vms_for(st, c).await?;
                k.page(vm_key, limit, cur)
            };
            Ok(Some(ok(page)))
        }
        // Without a change counter nothing is kept: ask the node for the one item.
        R::VdiskGet | R::VmGet if cache.generation(st.controller.as_ref()).is_none() => Ok(None),
        R::VdiskGet => {
            let req = Request::VdiskGet { name: name() };
            st.precheck(c, &req)?;
            Ok(item_or_none(vdisks_for(st, c).await, vdisk_key, &name()).map(ok))
        }
        R::VmGet => {
            let req = Request::VmGet { name: name() };
            st.precheck(c, &req)?;
            Ok(item_or_none(vms_for(st, c).await, vm_key, &name()).map(ok))
        }
        _ => Ok(None),
    }
}

/// The VM list for a request (role and input checked already).
async fn vms_for(st: &State, c: &Caller) -> Result<Arc<Kept<VmView>>, ControlError> {
    let fetch = || caller_fetch(st, c, Request::VmList, take_vms);
    let ctl = st.controller.as_ref();
    st.lists
        .vms
        .get(&st.lists, ctl, Need::Fresh, vm_key, fetch)
        .await
}

/// The virtual disk list for a request (role and input checked already).
async fn vdisks_for(st: &State, c: &Caller) -> Result<Arc<Kept<VdiskView>>, ControlError> {
    let fetch = || caller_fetch(st, c, Request::VdiskList, take_vdisks);
    let ctl = st.controller.as_ref();
    let cache = &st.lists;
    cache
        .vdisks
        .get(cache, ctl, Need::Fresh, vdisk_key, fetch)
        .await
}

/// A single get served from the kept list; any failure to have one leaves it to the node.
fn item_or_none<T: Serialize>(
    k: Result<Arc<Kept<T>>, ControlError>,
    key: fn(&T) -> &str,
    name: &str,
) -> Option<Bytes> {
    k.ok()?.item(key, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    fn names(b: &[u8]) -> (Vec<String>, Option<String>) {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        let items = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect();
        (items, v["next_cursor"].as_str().map(str::to_string))
    }

    #[allow(clippy::ptr_arg)] // the lists' key functions take their item type
    fn key(s: &String) -> &str {
        s
    }

    #[test]
    fn pages_match_page_by_and_walk_every_item_once() {
        let list: Vec<String> = ["d", "a", "c", "b", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let kept = Kept::new(7, list.clone(), key);
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let b = kept.page(key, 2, cursor.as_deref());
            // The same cut and the same JSON as the uncached pager.
            let reference = h::page_by(list.clone(), |s| s.as_str(), 2, cursor.as_deref());
            let ours: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(ours, reference);
            // Asked again, the very same buffer comes back.
            assert_eq!(kept.page(key, 2, cursor.as_deref()).as_ptr(), b.as_ptr());
            let (items, next) = names(&b);
            seen.extend(items);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
        assert_eq!(names(&kept.page(key, 2, Some("zz"))), (vec![], None));
    }

    #[test]
    fn items_found_by_name_and_pages_bounded() {
        let list: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        let kept = Kept::new(1, list, key);
        assert_eq!(&kept.item(key, "n3").unwrap()[..], b"\"n3\"");
        assert!(kept.item(key, "n33").is_none());
        for limit in 1..=(MAX_PAGES + 5) {
            let _ = kept.page(key, limit, None);
        }
        assert!(kept.pages.lock().len() <= MAX_PAGES);
    }

    /// A node with one VM whose NIC counters the test moves; it counts the lists it is asked.
    #[derive(Default)]
    struct FakeNode {
        generation: AtomicU64,
        tx_packets: AtomicU64,
        vm_lists: AtomicU64,
        vdisk_lists: AtomicU64,
    }

    impl Controller for FakeNode {
        fn execute(
            &self,
            _: Actor,
            req: Request,
        ) -> control::BoxFuture<'_, control::ControlResult> {
            Box::pin(async move {
                match req {
                    Request::VmList => {
                        self.vm_lists.fetch_add(1, Relaxed);
                        let tx = self.tx_packets.load(Relaxed);
                        Ok(Reply::Vms(vec![vm_view(tx)]))
                    }
                    Request::VdiskList => {
                        self.vdisk_lists.fetch_add(1, Relaxed);
                        Ok(Reply::Vdisks(Vec::new()))
                    }
                    _ => Err(ControlError::internal("not asked of this fake")),
                }
            })
        }

        fn generation(&self) -> Option<u64> {
            Some(self.generation.load(Relaxed))
        }
    }

    fn vm_view(tx_packets: u64) -> VmView {
        let nic = control::VmDeviceStatsView {
            id: "net0".into(),
            read_ops: 0,
            read_bytes: 0,
            write_ops: tx_packets,
            write_bytes: tx_packets * 60,
            flush_ops: 0,
            discard_ops: 0,
            errors: 0,
            mean_latency_ns: 0,
        };
        VmView {
            name: "vm1".into(),
            description: String::new(),
            state: "running".into(),
            operation: None,
            vcpus: 1,
            memory_mib: 64,
            disks: Vec::new(),
            nics: Vec::new(),
            kernel: "/k".into(),
            cmdline: String::new(),
            created_unix: 0,
            last_exit: None,
            stats: Some(control::VmStatsView {
                cpu_time_ns: 0,
                vcpu_exits: 0,
                memory_bytes: 64 << 20,
                disks: Vec::new(),
                nics: vec![nic],
            }),
            node: None,
        }
    }

    /// Makes the kept list `by` older, as if that much time had passed since it was fetched.
    fn pass_time<T: Serialize + Clone>(slot: &Slot<T>, by: Duration, key: fn(&T) -> &str) {
        let mut kept = slot.kept.write();
        if let Some(old) = kept.take() {
            let mut aged = Kept::new(old.generation, old.items.clone(), key);
            aged.at = old
                .at
                .checked_sub(by)
                .expect("the clock runs longer than a minute");
            *kept = Some(Arc::new(aged));
        }
    }

    /// Requests for the VM list and the statistics sampler, one sampler tick per period of
    /// [`FRESH`]: together they ask the node for each list once a period. (Before they shared
    /// it, the sampler asked every tick and the requests once more every [`FRESH`]: twice.)
    /// Time is simulated (kept lists are aged by hand, and "fresh" is stretched to 30 s) so no
    /// pause of a loaded machine changes the counts.
    #[tokio::test]
    async fn requests_and_the_sampler_share_one_fetch_per_period() {
        let node = FakeNode::default();
        let period = Duration::from_secs(30);
        let cache = ListCache {
            ages: Ages {
                fresh: period,
                aged_max: period * 5,
            },
            ..ListCache::new(true)
        };
        let request = || {
            let fetch = || internal_fetch(&node, Via::Api, Request::VmList, take_vms);
            cache.vms.get(&cache, &node, Need::Fresh, vm_key, fetch)
        };
        let mut prev = crate::stats::Prev::default();
        let nic = |s: &crate::stats::Sample| s.vms[0].nics[0].clone();
        for n in 1..=6u64 {
            node.tx_packets.store(n * 10, Relaxed);
            // Requests come before the sampler's tick in odd periods, after it in even ones.
            if n % 2 == 1 {
                for _ in 0..3 {
                    assert_eq!(request().await.unwrap().items()[0].name, "vm1");
                }
            }
            let s = crate::stats::sample(&mut prev, &node, &cache).await;
            if n % 2 == 0 {
                for _ in 0..3 {
                    let k = request().await.unwrap();
                    let st = k.items()[0].stats.as_ref().unwrap();
                    assert_eq!(st.nics[0].write_ops, n * 10, "the list the sampler fetched");
                }
            }
            assert_eq!(nic(&s).tx_packets, n * 10, "the sample is of this period");
            if n > 1 {
                assert!(nic(&s).tx_packets_per_sec > 0.0, "{:?}", nic(&s));
            }
            let asked = (node.vm_lists.load(Relaxed), node.vdisk_lists.load(Relaxed));
            assert_eq!(asked, (n, n), "period {n}: one fetch of each list");
            assert_eq!(cache.fetches(), asked);
            pass_time(&cache.vms, period, vm_key);
            pass_time(&cache.vdisks, period, vdisk_key);
        }
        // A change through the node: the next request must see it and fetches at once; the
        // sampler's next tick takes that list instead of asking again.
        node.generation.fetch_add(1, Relaxed);
        node.tx_packets.store(100, Relaxed);
        request().await.unwrap();
        let s = crate::stats::sample(&mut prev, &node, &cache).await;
        assert_eq!(nic(&s).tx_packets, 100);
        assert_eq!(node.vm_lists.load(Relaxed), 7);
        // Without a change counter nothing is kept: every caller asks.
        let off = ListCache::new(false);
        let before = node.vm_lists.load(Relaxed);
        crate::stats::sample(&mut crate::stats::Prev::default(), &node, &off).await;
        let fetch = || internal_fetch(&node, Via::Api, Request::VmList, take_vms);
        off.vms
            .get(&off, &node, Need::Fresh, vm_key, fetch)
            .await
            .unwrap();
        assert_eq!(node.vm_lists.load(Relaxed), before + 2);
    }

    #[test]
    fn freshness_needs_same_generation_and_youth() {
        let kept = Kept::new(5, vec!["a".to_string()], key);
        assert!(kept.fresh(Some(5), &AGES));
        assert!(!kept.fresh(Some(6), &AGES), "a change makes it stale");
        assert!(!kept.fresh(None, &AGES), "no change counter, no caching");
        let old = Kept {
            at: Instant::now() - FRESH - Duration::from_millis(1),
            ..Kept::new(5, vec!["a".to_string()], key)
        };
        assert!(!old.fresh(Some(5), &AGES), "counters move without changes");
        assert!(
            old.servable_while_refreshing(Some(5), &AGES),
            "an aged list answers while another request fetches"
        );
        assert!(
            !old.servable_while_refreshing(Some(6), &AGES),
            "never once something changed"
        );
        let ancient = Kept {
            at: Instant::now() - AGED_MAX - Duration::from_millis(1),
            ..Kept::new(5, vec!["a".to_string()], key)
        };
        assert!(!ancient.servable_while_refreshing(Some(5), &AGES));
    }
}
