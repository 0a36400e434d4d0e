//! One way to read the records of any batch, whatever its body kind (issue 18): the rkyv
//! archive of version 1 ([`crate::body_kind::RKYV_RECORDS`]), the compact body
//! ([`crate::body_kind::COMPACT`]), or records converted from a Kafka batch. Every reader goes
//! through [`crate::with_records`] and these accessors; the rkyv and compact kinds are read in
//! place (slices of the batch or of its decompressed body).

use crate::compact::{CompactHeaders, CompactIter, CompactRecord, CompactRecords};
use crate::{ArchivedHeader, ArchivedRecord, Header, Record};

/// The records of one batch.
#[derive(Debug, Clone, Copy)]
pub enum Records<'a> {
    /// Version 1: the rkyv archive, read in place.
    Archived(&'a [ArchivedRecord]),
    /// Version 2: the compact body, read in place.
    Compact(CompactRecords<'a>),
    /// Converted records (a Kafka body, decoded for native readers).
    Owned(&'a [Record]),
}

impl<'a> Records<'a> {
    pub fn len(&self) -> usize {
        match self {
            Records::Archived(r) => r.len(),
            Records::Compact(r) => r.len(),
            Records::Owned(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record `i` of the batch (offset `base_offset + i`).
    pub fn get(&self, i: usize) -> Option<RecordRef<'a>> {
        match self {
            Records::Archived(r) => r.get(i).map(RecordRef::Archived),
            Records::Compact(r) => r.get(i).map(RecordRef::Compact),
            Records::Owned(r) => r.get(i).map(RecordRef::Owned),
        }
    }

    pub fn iter(&self) -> RecordsIter<'a> {
        match *self {
            Records::Archived(r) => RecordsIter::Archived(r.iter()),
            Records::Compact(r) => RecordsIter::Compact(r.iter()),
            Records::Owned(r) => RecordsIter::Owned(r.iter()),
        }
    }
}

impl<'a> IntoIterator for Records<'a> {
    type Item = RecordRef<'a>;
    type IntoIter = RecordsIter<'a>;
    fn into_iter(self) -> RecordsIter<'a> {
        self.iter()
    }
}

/// Iterator of [`Records`].
#[derive(Debug, Clone)]
pub enum RecordsIter<'a> {
    Archived(std::slice::Iter<'a, ArchivedRecord>),
    Compact(CompactIter<'a>),
    Owned(std::slice::Iter<'a, Record>),
}

impl<'a> Iterator for RecordsIter<'a> {
    type Item = RecordRef<'a>;
    fn next(&mut self) -> Option<RecordRef<'a>> {
        match self {
            RecordsIter::Archived(i) => i.next().map(RecordRef::Archived),
            RecordsIter::Compact(i) => i.next().map(RecordRef::Compact),
            RecordsIter::Owned(i) => i.next().map(RecordRef::Owned),
        }
    }
}

/// One record of any kind, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum RecordRef<'a> {
    Archived(&'a ArchivedRecord),
    Compact(CompactRecord<'a>),
    Owned(&'a Record),
}

impl<'a> RecordRef<'a> {
    /// Index of the record in its batch (offset minus the batch's base offset).
    pub fn offset_delta(&self) -> u32 {
        match self {
            RecordRef::Archived(r) => r.offset_delta.to_native(),
            RecordRef::Compact(r) => r.index,
            RecordRef::Owned(r) => r.offset_delta,
        }
    }

    /// Timestamp minus the batch's first timestamp (a wrapping difference: add it to the
    /// header's `first_timestamp_us` with `wrapping_add`).
    pub fn timestamp_delta_us(&self) -> u64 {
        match self {
            RecordRef::Archived(r) => r.timestamp_delta_us.to_native(),
            RecordRef::Compact(r) => r.timestamp_delta_us,
            RecordRef::Owned(r) => r.timestamp_delta_us,
        }
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        match *self {
            RecordRef::Archived(r) => r.key.as_ref().map(|k| k.as_slice()),
            RecordRef::Compact(r) => r.key,
            RecordRef::Owned(r) => r.key.as_deref(),
        }
    }

    pub fn value(&self) -> &'a [u8] {
        match *self {
            RecordRef::Archived(r) => r.value.as_slice(),
            RecordRef::Compact(r) => r.value,
            RecordRef::Owned(r) => &r.value,
        }
    }

    /// The headers as `(name, value)` pairs.
    pub fn headers(&self) -> HeadersRef<'a> {
        match *self {
            RecordRef::Archived(r) => HeadersRef::Archived(r.headers.as_slice().iter()),
            RecordRef::Compact(r) => HeadersRef::Compact(r.headers),
            RecordRef::Owned(r) => HeadersRef::Owned(r.headers.iter()),
        }
    }

    /// An owned copy.
    pub fn to_record(&self) -> Record {
        Record {
            offset_delta: self.offset_delta(),
            timestamp_delta_us: self.timestamp_delta_us(),
            key: self.key().map(<[u8]>::to_vec),
            value: self.value().to_vec(),
            headers: self
                .headers()
                .map(|(k, v)| Header {
                    key: k.to_owned(),
                    value: v.to_vec(),
                })
                .collect(),
        }
    }
}

/// The headers of one record: an iterator of `(name, value)`; cheap to clone.
#[derive(Debug, Clone)]
pub enum HeadersRef<'a> {
    Archived(std::slice::Iter<'a, ArchivedHeader>),
    Compact(CompactHeaders<'a>),
    Owned(std::slice::Iter<'a, Header>),
}

impl<'a> HeadersRef<'a> {
    /// The value of the first header named `name`.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.clone().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

impl<'a> Iterator for HeadersRef<'a> {
    type Item = (&'a str, &'a [u8]);
    fn next(&mut self) -> Option<(&'a str, &'a [u8])> {
        match self {
            HeadersRef::Archived(i) => i.next().map(|h| (h.key.as_str(), h.value.as_slice())),
            HeadersRef::Compact(i) => i.next(),
            HeadersRef::Owned(i) => i.next().map(|h| (h.key.as_str(), h.value.as_slice())),
        }
    }
}
