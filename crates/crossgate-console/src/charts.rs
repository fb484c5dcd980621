//! Charts drawn by the server as inline SVG: nothing loaded from elsewhere,
//! no script; they work offline.

use maud::{Markup, html};
use std::collections::{BTreeMap, BTreeSet};

const PALETTE: [&str; 10] = [
    "#1d3557", "#e76f51", "#2a9d8f", "#e9c46a", "#6d597a", "#f4a261", "#457b9d", "#8ab17d",
    "#b56576", "#264653",
];

/// Horizontal bars, one per (label, value).
pub fn bars(title: &str, data: &[(String, u64)]) -> Markup {
    let max = data.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let row = 22u64;
    let label_w = 120u64;
    let bar_w = 300u64;
    let height = 40 + row * data.len() as u64;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(label_w + bar_w + 70) height=(height)
            role="img" aria-label=(title) {
            title { (title) }
            text x="10" y="22" font-weight="600" font-size="14" { (title) }
            @for (i, (label, value)) in data.iter().enumerate() {
                @let y = 34 + row * i as u64;
                text x="10" y=(y + 14) font-size="12" { (label) }
                rect x=(label_w) y=(y) width=(bar_w * value / max) height=(row - 6)
                    fill=(PALETTE[i % PALETTE.len()]) {}
                text x=(label_w + bar_w * value / max + 6) y=(y + 14) font-size="12" { (value) }
            }
        }
    }
}

/// One stacked bar per day, one colour per series (consumer, provider,
/// decision), with a legend.
pub fn stacked_days(title: &str, days: &BTreeMap<String, BTreeMap<String, u64>>) -> Markup {
    let series: Vec<&String> = days
        .values()
        .flat_map(|s| s.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let colour = |name: &str| {
        let i = series.iter().position(|s| *s == name).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let max = days
        .values()
        .map(|s| s.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_h = 160u64;
    let bar = 28u64;
    let gap = 14u64;
    let left = 44u64;
    let width = (left + (bar + gap) * days.len() as u64 + 20).max(320);
    let legend_y = 40 + plot_h + 40;
    let height = legend_y + 18 * series.len() as u64 + 10;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            role="img" aria-label=(title) {
            title { (title) }
            text x="10" y="22" font-weight="600" font-size="14" { (title) }
            @if days.is_empty() {
                text x="10" y="60" font-size="12" fill="#6b7785" { "nothing in this range" }
            }
            line x1=(left) y1=(40 + plot_h) x2=(width - 10) y2=(40 + plot_h) stroke="#9aa5b1" {}
            text x="6" y="48" font-size="11" fill="#6b7785" { (max) }
            text x="6" y=(40 + plot_h) font-size="11" fill="#6b7785" { "0" }
            @for (i, (day, counts)) in days.iter().enumerate() {
                @let x = left + 8 + (bar + gap) * i as u64;
                @let stack = stack(counts, max, plot_h);
                @for (name, value, top, h) in stack {
                    rect x=(x) y=(40 + top) width=(bar) height=(h) fill=(colour(name)) {
                        title { (day) " " (name) ": " (value) }
                    }
                }
                text x=(x) y=(40 + plot_h + 14) font-size="10" { (day.get(5..).unwrap_or(day)) }
            }
            @for (i, name) in series.iter().enumerate() {
                @let y = legend_y + 18 * i as u64;
                rect x="10" y=(y) width="12" height="12" fill=(colour(name)) {}
                text x="28" y=(y + 11) font-size="12" { (name) }
            }
        }
    }
}

/// (series, value, top, height) of each part of one day's bar, bottom up.
fn stack(counts: &BTreeMap<String, u64>, max: u64, plot_h: u64) -> Vec<(&str, u64, u64, u64)> {
    let mut below = 0u64;
    counts
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(name, value)| {
            let bottom = plot_h - plot_h * below / max;
            below += value;
            let top = plot_h - plot_h * below / max;
            (name.as_str(), *value, top, bottom - top)
        })
        .collect()
}
