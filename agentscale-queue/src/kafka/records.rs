//! Outgoing records, their headers and Kafka error mapping.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::Message;

use agentscale_core::task::now_ms;
use agentscale_core::{Error, Result};

use super::*;

pub(crate) fn kafka_err(what: &str, e: KafkaError) -> Error {
    match &e {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
            Error::InvalidInput(format!("{what}: record too large for the broker"))
        }
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::QueueFull,
        )
        | KafkaError::MetadataFetch(_) => Error::unavailable(what.to_string(), e),
        _ => Error::backend(what.to_string(), e),
    }
}

pub(crate) fn header_str<'a>(msg: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Outgoing {
    pub(crate) fn send(&self, producer: &FutureProducer) -> std::result::Result<DeliveryFuture, KafkaError> {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).payload(&self.payload[..]);
        // No header list at all for plain tasks (the common case): an empty
        // one is still allocated and copied by librdkafka per record.
        if !self.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
            for (k, v) in &self.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                });
            }
            record = record.headers(headers);
        }
        if let Some(k) = &self.key {
            record = record.key(&k[..]);
        }
        let mut record = record;
        loop {
            match producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    pub(crate) async fn deliver(&self, producer: &FutureProducer) -> Result<()> {
        let fut = self.send(producer).map_err(|e| kafka_err("kafka produce", e))?;
        match fut.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(kafka_err(&format!("kafka produce to {}", self.topic), e)),
            Err(_) => Err(Error::Closed("kafka producer dropped".into())),
        }
    }

    pub(crate) fn deliver_blocking(&self, producer: &FutureProducer) -> Result<()> {
        let fut = self.send(producer).map_err(|e| kafka_err("kafka produce", e))?;
        match futures::executor::block_on(fut) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(kafka_err(&format!("kafka produce to {}", self.topic), e)),
            Err(_) => Err(Error::Closed("kafka producer dropped".into())),
        }
    }
}

pub(crate) fn dlt_headers(
    topic: &str,
    partition: i32,
    offset: i64,
    attempts: u32,
    reason: &str,
) -> Vec<(&'static str, String)> {
    vec![
        (HEADER_ORIGIN_TOPIC, topic.to_string()),
        (HEADER_ORIGIN_PARTITION, partition.to_string()),
        (HEADER_ORIGIN_OFFSET, offset.to_string()),
        (HEADER_ATTEMPT, attempts.to_string()),
        (HEADER_REASON, reason.to_string()),
        (HEADER_DEAD_AT_MS, now_ms().to_string()),
    ]
}
