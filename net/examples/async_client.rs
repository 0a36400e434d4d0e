//! The client's async forms, driven by a minimal executor (`futures_lite::future::block_on`).
//! They need no particular runtime: the same code runs inside tokio, smol or glommio tasks.
//!
//! ```text
//! cargo run -p shardline-net --example async_client -- 127.0.0.1:7070 demo-async
//! ```

use shardline_net::client::{
    Client, ClientConfig, ClientError, Consumer, ConsumerConfig, OffsetSpec, Producer,
    ProducerConfig, TopicConfig, code,
};

async fn run(addr: &str, topic: &str) -> Result<(), ClientError> {
    let client = Client::connect_async(addr, ClientConfig::default()).await?;
    println!("ping {:?}", client.ping_async().await?);
    let config = TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    };
    match client.create_topic_async(topic, config).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(code::TOPIC_EXISTS) => {}
        Err(e) => return Err(e),
    }
    let start = client
        .list_offsets_async(topic, 0, OffsetSpec::Latest)
        .await?;

    let producer = Producer::new(client.clone(), ProducerConfig::default())?;
    let mut handles = Vec::new();
    for i in 0..10 {
        handles.push(
            producer
                .send_async(topic, None, format!("async {i}"), vec![])
                .await,
        );
    }
    for h in handles {
        let d = h.await?;
        println!("acknowledged at {}/{:?}", d.partition, d.offset);
    }

    let mut consumer = Consumer::new(client, ConsumerConfig::default())?;
    consumer
        .subscribe_async(topic, 0, OffsetSpec::At(start))
        .await?;
    for _ in 0..10 {
        let r = consumer.poll_async().await?;
        println!(
            "consumed {} {}",
            r.offset,
            String::from_utf8_lossy(&r.value)
        );
    }
    Ok(())
}

fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7070".into());
    let topic = args.next().unwrap_or_else(|| "demo-async".into());
    futures_lite::future::block_on(run(&addr, &topic))
}
