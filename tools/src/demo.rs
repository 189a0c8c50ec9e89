//! The demo data of `strata dev --demo`: IoT sensor readings as JSON events, keyed by
//! device, into the `sensors` topic.
//!
//! Fifty devices over four sites report temperature (a random walk per device), humidity and
//! pressure; `status` is `alarm` above 35 °C, `warn` above 30 °C, else `ok`. Two
//! aggregations are defined on the topic ([`AGGREGATIONS`]); the per-site alarm counts also
//! go to the [`ALARMS_TOPIC`] topic as each minute closes.

use std::time::Duration;

use serde_json::json;
use strata_client::{Client, ProducerRecord, TopicSpec};

/// The demo topic.
pub const TOPIC: &str = "sensors";
const DEVICES: usize = 50;
const SITES: [&str; 4] = ["lyon", "oslo", "porto", "turin"];

/// A small deterministic generator (xorshift64*), so the demo needs no randomness crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One device's state.
#[derive(Debug, Clone)]
struct Device {
    id: String,
    site: &'static str,
    temperature: f64,
    humidity: f64,
    pressure: f64,
}

/// Makes demo events.
pub struct Generator {
    rng: Rng,
    devices: Vec<Device>,
    next: usize,
}

impl Generator {
    /// A generator with a fixed seed.
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng(seed.max(1));
        let devices = (0..DEVICES)
            .map(|i| Device {
                id: format!("sensor-{:04}", i + 1),
                site: SITES[i % SITES.len()],
                temperature: 18.0 + 8.0 * rng.next(),
                humidity: 35.0 + 30.0 * rng.next(),
                pressure: 1000.0 + 25.0 * rng.next(),
            })
            .collect();
        Generator {
            rng,
            devices,
            next: 0,
        }
    }

    /// The next event: (device id, JSON text).
    pub fn event(&mut self, timestamp_ms: i64) -> (String, String) {
        let i = self.next % self.devices.len();
        self.next += 1;
        let (dt, dh, dp) = (
            self.rng.next() - 0.48,
            self.rng.next() - 0.5,
            self.rng.next() - 0.5,
        );
        let d = &mut self.devices[i];
        d.temperature = (d.temperature + dt).clamp(-10.0, 45.0);
        d.humidity = (d.humidity + 2.0 * dh).clamp(5.0, 95.0);
        d.pressure = (d.pressure + dp).clamp(950.0, 1050.0);
        let status = if d.temperature > 35.0 {
            "alarm"
        } else if d.temperature > 30.0 {
            "warn"
        } else {
            "ok"
        };
        let event = json!({
            "device": d.id,
            "site": d.site,
            "ts": timestamp_ms,
            "temperature": (d.temperature * 10.0).round() / 10.0,
            "humidity": (d.humidity * 10.0).round() / 10.0,
            "pressure": (d.pressure * 10.0).round() / 10.0,
            "status": status,
        });
        (d.id.clone(), event.to_string())
    }
}

/// The demo's aggregations on `sensors`: per-device 1-minute temperature averages and p99,
/// and per-site alarm counts.
pub const AGGREGATIONS: [&str; 2] = ["device-temperature-1m", "site-alarms-1m"];

/// The topic that receives every closed window of `site-alarms-1m`.
pub const ALARMS_TOPIC: &str = "site-alarms";

/// Creates a topic unless it exists.
async fn create_topic(client: &Client, name: &str, spec: TopicSpec) -> anyhow::Result<()> {
    match client.admin().create_topic(name, spec).await {
        Err(e) if e.code() != Some(strata_client::ErrorCode::TopicExists) => Err(e.into()),
        _ => Ok(()),
    }
}

async fn define_aggregations(client: &Client) -> anyhow::Result<()> {
    let alarms = TopicSpec {
        partitions: 2,
        retention_ms: Some(7 * 86_400_000),
        ..Default::default()
    };
    create_topic(client, ALARMS_TOPIC, alarms).await?;
    let specs = [
        strata_client::AggregationSpec {
            name: AGGREGATIONS[0].into(),
            topic: TOPIC.into(),
            window: "tumbling:1m".into(),
            time_field: "ts".into(),
            group_by: vec!["device".into()],
            measures: vec![
                "count".into(),
                "avg(temperature)".into(),
                "p99(temperature)".into(),
                "max(temperature)".into(),
            ],
            lateness_ms: 5_000,
            ..Default::default()
        },
        strata_client::AggregationSpec {
            name: AGGREGATIONS[1].into(),
            topic: TOPIC.into(),
            window: "tumbling:1m".into(),
            time_field: "ts".into(),
            group_by: vec!["site".into()],
            filter: r#"status == "alarm""#.into(),
            measures: vec!["count".into(), "count_distinct(device)".into()],
            lateness_ms: 5_000,
            emit_to: ALARMS_TOPIC.into(),
            ..Default::default()
        },
    ];
    for spec in specs {
        match client.aggregations().create(spec).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(strata_client::ErrorCode::AggregationExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates the demo topic if missing and produces `rate` events per second until stopped.
pub async fn run(
    client: Client,
    rate: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sensors = TopicSpec {
        partitions: 8,
        retention_ms: Some(86_400_000),
        ..Default::default()
    };
    create_topic(&client, TOPIC, sensors).await?;
    define_aggregations(&client).await?;
    let producer = client.producer().build();
    let mut generator = Generator::new(0x5eed);
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut tick = tokio::time::interval(period.max(Duration::from_micros(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
                let (device, event) = generator.event(now);
                // Deliveries are not awaited one by one; failures show up in the broker log.
                drop(producer.send(ProducerRecord::new(TOPIC, event).key(device).timestamp(now)).await?);
            }
        }
    }
    producer.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_plausible_json() {
        let mut g = Generator::new(1);
        for i in 0..500 {
            let (device, text) = g.event(1_700_000_000_000 + i);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["device"], device.as_str());
            let t = v["temperature"].as_f64().unwrap();
            assert!((-10.0..=45.0).contains(&t));
            assert!(["ok", "warn", "alarm"].contains(&v["status"].as_str().unwrap()));
            assert!(SITES.contains(&v["site"].as_str().unwrap()));
        }
    }
}
