//! A clock for tests whose time is set by hand, to cross UTC midnight without waiting.

use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, TimeZone, Utc};

use super::Clock;

pub(super) struct TestClock {
    now: Mutex<DateTime<Utc>>,
}

impl TestClock {
    pub(super) fn at(year: i32, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> Self {
        let now = Utc
            .with_ymd_and_hms(year, month, day, hour, minute, second)
            .single()
            .expect("valid test time");
        Self { now: Mutex::new(now) }
    }

    pub(super) fn set(&self, now: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
