//! Instance types and their offerings: what a node of a type offers, where, and at what price.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::labels;
use crate::requirements::{Incompatibility, Requirement, Requirements};
use crate::resources::Resources;

/// How an instance is bought.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityType {
    OnDemand,
    Spot,
    Reserved,
}

impl CapacityType {
    /// The label value (`on-demand`, `spot`, `reserved`).
    pub fn as_str(&self) -> &'static str {
        match self {
            CapacityType::OnDemand => "on-demand",
            CapacityType::Spot => "spot",
            CapacityType::Reserved => "reserved",
        }
    }
}

impl FromStr for CapacityType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on-demand" => Ok(CapacityType::OnDemand),
            "spot" => Ok(CapacityType::Spot),
            "reserved" => Ok(CapacityType::Reserved),
            other => Err(format!("unknown capacity type {other:?} (expected on-demand, spot or reserved)")),
        }
    }
}

impl fmt::Display for CapacityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An hourly price in billionths of a US dollar: exact, so plans compare and sum without float drift.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Price(pub u64);

impl Price {
    /// Nano-dollars in one dollar.
    pub const NANOS_PER_USD: u64 = 1_000_000_000;

    /// Parses a decimal dollar amount ("0.096", "12", "0.0000001"), exactly; more than nine decimals is an error.
    pub fn parse_usd(text: &str) -> Result<Price, String> {
        let bad = || format!("invalid price {text:?}: expected a non-negative decimal dollar amount");
        let (whole, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
        if (whole.is_empty() && frac.is_empty())
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        if frac.len() > 9 {
            return Err(format!("invalid price {text:?}: more than nine decimal places"));
        }
        let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        let frac_nanos: u64 =
            if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| bad())? };
        whole
            .checked_mul(Self::NANOS_PER_USD)
            .and_then(|w| w.checked_add(frac_nanos))
            .map(Price)
            .ok_or_else(|| format!("invalid price {text:?}: too large"))
    }

    /// The price in dollars per hour (for display and JSON only; never for decisions).
    pub fn usd(&self) -> f64 {
        self.0 as f64 / Self::NANOS_PER_USD as f64
    }

    /// `self × (1 − fraction)` where `fraction` is in millionths, rounded to the nearest nano-dollar.
    pub fn discounted_ppm(&self, discount_ppm: u32) -> Price {
        let keep = u128::from(1_000_000u32.saturating_sub(discount_ppm));
        Price(((u128::from(self.0) * keep + 500_000) / 1_000_000) as u64)
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.4}/h", self.usd())
    }
}

/// Where and how an instance type can be bought, and for how much.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Offering {
    pub zone: String,
    pub capacity_type: CapacityType,
    pub price: Price,
    /// False while the offering is known to be out of capacity; such offerings are never chosen.
    pub available: bool,
}

impl Offering {
    /// Whether the offering's zone and capacity type are admitted by the requirements.
    pub fn is_compatible(&self, requirements: &Requirements) -> bool {
        let admits = |key: &str, value: &str| requirements.get(key).is_none_or(|r| r.matches(Some(value)));
        admits(labels::ZONE, &self.zone) && admits(labels::CAPACITY_TYPE, self.capacity_type.as_str())
    }
}

/// The resources a node keeps for itself: allocatable = capacity − kube-reserved − system-reserved − eviction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Overhead {
    pub kube_reserved: Resources,
    pub system_reserved: Resources,
    pub eviction_threshold: Resources,
}

impl Overhead {
    /// The sum of every reservation.
    pub fn total(&self) -> Resources {
        self.kube_reserved.plus(&self.system_reserved).plus(&self.eviction_threshold)
    }
}

/// An instance type: its labels (as requirements), capacity, overhead and offerings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceType {
    pub name: String,
    /// The labels a node of this type carries, as `key In [value]` (or `DoesNotExist` for labels it lacks),
    /// plus the zones and capacity types its offerings span.
    #[serde(skip)]
    pub requirements: Requirements,
    /// What the kubelet reports as capacity (memory after the VM's own overhead).
    pub capacity: Resources,
    pub overhead: Overhead,
    pub offerings: Vec<Offering>,
}

impl InstanceType {
    /// What pods can use: capacity minus overhead, never negative.
    pub fn allocatable(&self) -> Resources {
        self.capacity.minus(&self.overhead.total()).clamp_non_negative()
    }

    /// Whether `requests` fit the allocatable resources.
    pub fn fits(&self, requests: &Resources) -> bool {
        requests.fits_in(&self.allocatable())
    }

    /// The available offerings whose zone and capacity type the requirements admit.
    pub fn compatible_offerings<'a>(
        &'a self,
        requirements: &'a Requirements,
    ) -> impl Iterator<Item = &'a Offering> {
        self.offerings.iter().filter(move |o| o.available && o.is_compatible(requirements))
    }

    /// The cheapest available offering the requirements admit (ties: the first listed).
    pub fn cheapest_offering<'a>(&'a self, requirements: &'a Requirements) -> Option<&'a Offering> {
        self.compatible_offerings(requirements).min_by_key(|o| o.price)
    }

    /// Whether a node of this type could satisfy the requirements on its own: its labels are compatible (a
    /// key the type does not define must admit an absent label, unless it is well-known) and some available
    /// offering is admitted. The error says which label or that no offering remains.
    pub fn check_compatible(&self, requirements: &Requirements) -> Result<(), Incompatibility> {
        self.requirements.compatible(requirements)?;
        self.check_offerings(requirements)
    }

    /// Whether the type can back a node whose other labels come from elsewhere (a NodePool's template): only
    /// the keys the type defines must intersect (Karpenter's instance-type filter), and some available
    /// offering must be admitted.
    pub fn check_intersects(&self, requirements: &Requirements) -> Result<(), Incompatibility> {
        self.requirements.intersects(requirements)?;
        self.check_offerings(requirements)
    }

    fn check_offerings(&self, requirements: &Requirements) -> Result<(), Incompatibility> {
        if self.compatible_offerings(requirements).next().is_none() {
            let wanted = [labels::ZONE, labels::CAPACITY_TYPE]
                .iter()
                .filter_map(|k| requirements.get(k).map(Requirement::to_string))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Incompatibility::Conflict {
                key: labels::ZONE.to_owned(),
                wanted: if wanted.is_empty() { "any offering".to_owned() } else { wanted },
                offered: format!("no available offering of {}", self.name),
            });
        }
        Ok(())
    }

    /// The single value a label has on this type (`None` if it has none or several).
    pub fn label(&self, key: &str) -> Option<&str> {
        let values = self.requirements.get(key)?.values()?;
        if values.len() == 1 { values.first().map(String::as_str) } else { None }
    }
}
