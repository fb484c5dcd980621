//! The pages, as HTML (maud escapes every value it writes).

use crate::PAGE_SIZE;
use crate::charts;
use crate::query::{Query, entry_href, received_href};
use crate::source::Log;
use crossgate_audit::entry::hex;
use crossgate_audit::{Filter, StoreError, Stored};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::collections::BTreeMap;

const DECISIONS: [&str; 8] = [
    "allowed",
    "denied",
    "throttled",
    "invalid",
    "delivered",
    "failed",
    "dead",
    "changed",
];

const STYLE: &str = "
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2733; background: #f6f7f9; }
header { background: #1d3557; color: #fff; padding: 10px 24px; display: flex; gap: 24px; align-items: baseline; }
header b { font-size: 17px; }
header a { color: #dbe7f5; text-decoration: none; }
header a.here { color: #fff; font-weight: 600; border-bottom: 2px solid #e9c46a; }
main { padding: 16px 24px; }
h1 { font-size: 20px; margin: 4px 0 12px; }
h2 { font-size: 16px; margin: 20px 0 8px; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
form.filters { display: grid; grid-template-columns: repeat(4, minmax(150px, 1fr)); gap: 8px 16px; background: #fff; padding: 12px; margin-bottom: 12px; border: 1px solid #e3e6ea; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: #52606d; }
form.filters input, form.filters select { font: inherit; padding: 4px; }
form.filters .actions { grid-column: 1 / -1; display: flex; gap: 12px; align-items: center; }
button { font: inherit; padding: 5px 14px; background: #1d3557; color: #fff; border: 0; border-radius: 3px; }
.decision { padding: 1px 6px; border-radius: 3px; font-size: 12px; }
.d-allowed, .d-delivered { background: #d8f3dc; }
.d-denied, .d-invalid, .d-dead, .d-failed { background: #ffd6d6; }
.d-throttled { background: #ffe8b3; }
.d-changed { background: #dde5f3; }
.ok { color: #1b7a3a; font-weight: 600; }
.bad { color: #b3261e; font-weight: 600; }
.muted { color: #6b7785; }
.pager { margin: 10px 0; display: flex; gap: 16px; }
dl.entry { display: grid; grid-template-columns: 180px 1fr; background: #fff; padding: 12px; border: 1px solid #e3e6ea; }
dl.entry dt { color: #52606d; }
dl.entry dd { margin: 0 0 6px; word-break: break-all; font-family: ui-monospace, monospace; }
.charts svg { background: #fff; border: 1px solid #e3e6ea; margin: 0 16px 16px 0; vertical-align: top; }
";

/// The frame of every page: the navigation, then `body`.
fn layout(title: &str, here: &str, body: Markup) -> String {
    let nav = [
        ("/", "Search"),
        ("/received", "Who received a record"),
        ("/partners", "Partners"),
        ("/charts", "Charts"),
        ("/verify", "Verify"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " — crossgate audit console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    b { "crossgate audit console" }
                    @for (href, name) in nav {
                        a href=(href) class=[(href == here).then_some("here")] { (name) }
                    }
                    span.muted { "read-only" }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

/// A page saying what went wrong.
pub fn problem(message: &str) -> String {
    layout(
        "Problem",
        "",
        html! { h1 { "Cannot show this page" } p { (message) } p { a href="/" { "Back to the search" } } },
    )
}

/// An entry's record ids, each a link to who received it (an answer of
/// several records names them all, comma-separated).
fn record_links(ids: &str) -> Markup {
    html! {
        @for (n, id) in crossgate_audit::split_record_ids(ids).enumerate() {
            @if n > 0 { ", " }
            a href=(received_href(&id)) { (id) }
        }
    }
}

fn decision(d: &str) -> Markup {
    html! { span class={ "decision d-" (d) } { (d) } }
}

/// Whether `s` released a record to a department: a query answered, or a
/// published record delivered (a publish's `allowed` only queues it; its
/// delivery is the release, and a delivery given up on is none).
fn released(s: &Stored) -> bool {
    use crossgate_audit::{Decision, Kind};
    !s.entry.consumer.is_empty()
        && matches!(
            (s.entry.kind, s.entry.decision),
            (Kind::Query, Decision::Allowed) | (Kind::Publish, Decision::Delivered)
        )
}

/// Whether `s` is a department's exchange (a query or a publish), not an
/// auditor's reading or an operator's change.
fn exchange(s: &Stored) -> bool {
    matches!(
        s.entry.kind,
        crossgate_audit::Kind::Query | crossgate_audit::Kind::Publish
    )
}

/// Every entry `filter` matches, in order.
fn scan(
    store: &mut dyn Log,
    filter: &Filter,
    mut visit: impl FnMut(Stored),
) -> Result<(), StoreError> {
    store.scan(filter, &mut |s| {
        visit(s);
        true
    })
}

fn filters_form(q: &Query) -> Markup {
    html! {
        form.filters method="get" action="/" {
            @for (name, value) in q.fields() {
                @if name == "decision" {
                    label { "decision"
                        select name="decision" {
                            option value="" { "any" }
                            @for d in DECISIONS {
                                option value=(d) selected[value == d] { (d) }
                            }
                        }
                    }
                } @else if name == "since" || name == "until" {
                    label { (if name == "since" { "from (day or time)" } else { "until (day or time, not included)" })
                        input type="text" name=(name) value=(value) placeholder="2026-11-23";
                    }
                } @else {
                    label { (name.replace('_', " "))
                        input type="text" name=(name) value=(value);
                    }
                }
            }
            div.actions {
                button type="submit" { "Search" }
                a href="/" { "clear" }
            }
        }
    }
}

/// Search: the form, one page of matching entries, links to the others and
/// to the export of everything the filter matches.
pub fn search(store: &mut dyn Log, q: &Query) -> Result<String, StoreError> {
    let skip = (q.page - 1).saturating_mul(PAGE_SIZE);
    let mut total = 0usize;
    let mut rows = Vec::with_capacity(PAGE_SIZE);
    scan(store, &q.to_filter(), |s| {
        if total >= skip && rows.len() < PAGE_SIZE {
            rows.push(s);
        }
        total += 1;
    })?;
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let body = html! {
        h1 { "Access log" }
        (filters_form(q))
        p {
            (total) " entries match"
            @if total > 0 { "; page " (q.page) " of " (pages) }
            " · export this filter as "
            a id="export-csv" href=(q.href("/export.csv", 1)) { "CSV" } " or "
            a id="export-jsonl" href=(q.href("/export.jsonl", 1)) { "JSON Lines" }
        }
        table id="entries" {
            thead { tr {
                th { "time" } th { "kind" } th { "consumer" } th { "provider" } th { "record type" }
                th { "record id" } th { "purpose" } th { "decision" } th { "entry" }
            } }
            tbody {
                @for s in &rows {
                    @let e = &s.entry;
                    tr {
                        td { (e.time) }
                        td { (e.kind.as_str()) }
                        td { (e.consumer) }
                        td { (e.provider) }
                        td { (e.record_type) }
                        td { @if e.record_id.is_empty() { span.muted { "—" } } @else { (record_links(&e.record_id)) } }
                        td { (e.purpose) }
                        td { (decision(e.decision.as_str())) }
                        td { a.entry-link href=(entry_href(&s.writer, s.sequence)) { (s.writer) " #" (s.sequence) } }
                    }
                }
            }
        }
        div.pager {
            @if q.page > 1 { a href=(q.href("/", q.page - 1)) { "← previous page" } }
            @if q.page < pages { a href=(q.href("/", q.page + 1)) { "next page →" } }
        }
    };
    Ok(layout("Search", "/", body))
}

/// One entry: every field, its place in its chain, its hashes.
pub fn entry(store: &mut dyn Log, q: &Query) -> Result<Option<String>, StoreError> {
    if q.writer.is_empty() || q.sequence == 0 {
        return Ok(None);
    }
    let filter = Filter {
        chain_order: true,
        from_sequence: q.sequence,
        to_sequence: q.sequence,
        ..Filter::default()
    };
    let mut found = None;
    scan(store, &filter, |s| {
        if s.writer == q.writer {
            found = Some(s);
        }
    })?;
    let Some(s) = found else { return Ok(None) };
    let e = &s.entry;
    let fields: [(&str, String); 18] = [
        ("chain (writer)", s.writer.clone()),
        ("position in chain", s.sequence.to_string()),
        ("time", e.time.clone()),
        ("request id", e.request_id.clone()),
        ("kind", e.kind.as_str().to_owned()),
        ("consumer", e.consumer.clone()),
        ("provider", e.provider.clone()),
        ("record type", e.record_type.clone()),
        ("record id", e.record_id.clone()),
        ("purpose", e.purpose.clone()),
        ("approval reference", e.approval_reference.clone()),
        ("decision", e.decision.as_str().to_owned()),
        ("reason", e.reason.clone()),
        ("released fields", e.released_fields.join(", ")),
        ("record digest (SHA-256)", e.record_digest.clone()),
        ("latency (µs)", e.latency_micros.to_string()),
        ("previous hash", hex(&s.previous_hash)),
        ("entry hash", hex(&s.entry_hash)),
    ];
    let body = html! {
        h1 { "Entry " (s.writer) " #" (s.sequence) " " (decision(e.decision.as_str())) }
        dl.entry id="entry" {
            @for (name, value) in &fields {
                dt { (name) }
                dd { @if value.is_empty() { span.muted { "—" } } @else { (value) } }
            }
        }
        p.pager {
            @if s.sequence > 1 { a href=(entry_href(&s.writer, s.sequence - 1)) { "← previous in chain" } }
            @if let Some(next) = s.sequence.checked_add(1) {
                a href=(entry_href(&s.writer, next)) { "next in chain →" }
            }
            @if !e.record_id.is_empty() { "who received " (record_links(&e.record_id)) }
        }
        p.muted { "The entry hash covers every field above and the previous hash: the verify page recomputes the chain." }
    };
    Ok(Some(layout("Entry", "", body)))
}

/// Who received record X: the entries that released it, and every other
/// decision about it.
pub fn received(store: &mut dyn Log, q: &Query) -> Result<String, StoreError> {
    let form = html! {
        form.filters method="get" action="/received" {
            label { "record id" input type="text" name="record_id" value=(q.record_id); }
            div.actions { button type="submit" { "Who received it?" } }
        }
    };
    if q.record_id.is_empty() {
        return Ok(layout(
            "Who received a record",
            "/received",
            html! { h1 { "Who received a record" } (form) },
        ));
    }
    // The store finds the entries naming the record, alone or among the
    // records of one answer.
    let (mut releases, mut other) = (Vec::new(), Vec::new());
    let naming = Filter {
        record_id: Some(q.record_id.clone()),
        ..Filter::default()
    };
    scan(store, &naming, |s| {
        if released(&s) {
            releases.push(s);
        } else {
            other.push(s);
        }
    })?;
    let table = |rows: &[Stored]| {
        html! {
            table {
                thead { tr { th { "time" } th { "receiver" } th { "provider" } th { "record type" } th { "purpose" } th { "decision" } th { "grant and reason" } th { "released fields" } th { "entry" } } }
                tbody {
                    @for s in rows {
                        @let e = &s.entry;
                        tr {
                            td { (e.time) } td { (e.consumer) } td { (e.provider) } td { (e.record_type) }
                            td { (e.purpose) } td { (decision(e.decision.as_str())) } td { (e.reason) }
                            td { (e.released_fields.join(", ")) }
                            td { a href=(entry_href(&s.writer, s.sequence)) { (s.writer) " #" (s.sequence) } }
                        }
                    }
                }
            }
        }
    };
    let body = html! {
        h1 { "Who received record " (q.record_id) }
        (form)
        h2 { (releases.len()) " releases" }
        p.muted { "A release is a query answered with the record, or the record delivered to a receiver." }
        (table(&releases))
        h2 { (other.len()) " other decisions about it" }
        (table(&other))
    };
    Ok(layout("Who received a record", "/received", body))
}

/// Decisions per partner, as consumer and as provider.
pub fn partners(store: &mut dyn Log, q: &Query) -> Result<String, StoreError> {
    let time = Filter {
        since: q.to_filter().since,
        until: q.to_filter().until,
        ..Filter::default()
    };
    // partner -> (as consumer, as provider) -> decision -> count
    let mut table: BTreeMap<String, [BTreeMap<&'static str, u64>; 2]> = BTreeMap::new();
    scan(store, &time, |s| {
        if !exchange(&s) {
            return;
        }
        let d = s.entry.decision.as_str();
        if !s.entry.consumer.is_empty() {
            *table.entry(s.entry.consumer.clone()).or_default()[0]
                .entry(d)
                .or_default() += 1;
        }
        if !s.entry.provider.is_empty() {
            *table.entry(s.entry.provider.clone()).or_default()[1]
                .entry(d)
                .or_default() += 1;
        }
    })?;
    let body = html! {
        h1 { "Partners" }
        p.muted { "Entries per partner and decision, as consumer (it asked or received) and as provider (its records were asked for or sent). A throttled entry stands for every call refused in its second." }
        table id="partners" {
            thead {
                tr { th { "partner" } th { "as" } @for d in DECISIONS { th.num { (d) } } }
            }
            tbody {
                @for (partner, sides) in &table {
                    @for (i, side) in sides.iter().enumerate() {
                        tr {
                            td { @if i == 0 { a href=(Query { consumer: partner.clone(), ..Query::default() }.href("/", 1)) { (partner) } } }
                            td.muted { (if i == 0 { "consumer" } else { "provider" }) }
                            @for d in DECISIONS { td.num { (side.get(d).copied().unwrap_or(0)) } }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Partners", "/partners", body))
}

/// Charts over the filter's time range.
pub fn charts(store: &mut dyn Log, q: &Query) -> Result<String, StoreError> {
    let time = Filter {
        since: q.to_filter().since,
        until: q.to_filter().until,
        ..Filter::default()
    };
    let mut by_consumer: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut by_provider: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut decisions: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut refused: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    scan(store, &time, |s| {
        let e = &s.entry;
        let day = e.time.get(..10).unwrap_or(&e.time).to_owned();
        let d = e.decision.as_str();
        *decisions.entry(d).or_default() += 1;
        // Accesses: records released to a department.
        if released(&s) {
            *by_consumer
                .entry(day.clone())
                .or_default()
                .entry(e.consumer.clone())
                .or_default() += 1;
            *by_provider
                .entry(day.clone())
                .or_default()
                .entry(e.provider.clone())
                .or_default() += 1;
        }
        if matches!(d, "denied" | "throttled") {
            *refused
                .entry(day)
                .or_default()
                .entry(d.to_owned())
                .or_default() += 1;
        }
    })?;
    let decisions: Vec<(String, u64)> = DECISIONS
        .iter()
        .map(|d| ((*d).to_owned(), decisions.get(d).copied().unwrap_or(0)))
        .collect();
    let body = html! {
        h1 { "Charts" }
        form.filters method="get" action="/charts" {
            label { "from (day)" input type="text" name="since" value=(q.since) placeholder="2026-11-01"; }
            label { "until (day, not included)" input type="text" name="until" value=(q.until); }
            div.actions { button type="submit" { "Draw" } }
        }
        div.charts {
            (charts::stacked_days("Accesses per day by consumer", &by_consumer))
            (charts::stacked_days("Accesses per day by provider", &by_provider))
            (charts::bars("Decisions by kind", &decisions))
            (charts::stacked_days("Denials and throttles per day", &refused))
        }
        p.muted { "Accesses are queries answered and records delivered (allowed, delivered). A throttled entry stands for every call refused in its second." }
    };
    Ok(layout("Charts", "/charts", body))
}

/// Every chain verified from its start to its head.
pub fn verify(store: &mut dyn Log) -> Result<String, StoreError> {
    let reports = store.verify()?;
    let intact = reports.iter().all(|r| r.broken.is_none());
    let body = html! {
        h1 { "Verify" }
        @if intact {
            p.ok id="verdict" { "Every chain verifies: nothing was edited, deleted, inserted or reordered." }
        } @else {
            p.bad id="verdict" { "The log was tampered with: see the first bad entry of each chain below." }
        }
        table id="chains" {
            thead { tr { th { "chain (writer)" } th.num { "entries checked" } th { "result" } } }
            tbody {
                @for r in &reports {
                    tr {
                        td { (r.writer) }
                        td.num { (r.checked) }
                        td {
                            @match &r.broken {
                                None => span.ok { "intact" },
                                Some((sequence, why)) => {
                                    span.bad { "first bad entry: " }
                                    a href=(entry_href(&r.writer, *sequence)) { "#" (sequence) }
                                    " — " (why)
                                }
                            }
                        }
                    }
                }
            }
        }
        p.muted { "Verify recomputes each entry's hash from its fields and the previous hash, from the first entry of each chain to its recorded head." }
    };
    Ok(layout("Verify", "/verify", body))
}

/// The filter's entries as CSV, the header first.
pub fn export_csv(store: &mut dyn Log, q: &Query) -> Result<String, StoreError> {
    let mut out = String::from(crossgate_audit::entry::CSV_HEADER);
    out.push('\n');
    scan(store, &q.to_filter(), |s| {
        out.push_str(&s.to_csv_line());
        out.push('\n');
    })?;
    Ok(out)
}

/// The filter's entries as JSON Lines.
pub fn export_jsonl(store: &mut dyn Log, q: &Query) -> Result<String, StoreError> {
    let mut out = String::new();
    scan(store, &q.to_filter(), |s| {
        out.push_str(&s.to_json_line());
        out.push('\n');
    })?;
    Ok(out)
}
