// KafkaJS 2.x: a producer and a consumer group reading everything back.
// Usage: node kafkajs_group.js KAFKAJS_DIR BOOTSTRAP TOPIC COUNT. Prints 'ok N'.
const [dir, bootstrap, topic, countArg] = process.argv.slice(2);
const { Kafka, logLevel } = require(`${dir}/node_modules/kafkajs`);
const count = Number(countArg);
const kafka = new Kafka({ clientId: 'kjs', brokers: [bootstrap], logLevel: logLevel.ERROR });

async function main() {
  const producer = kafka.producer();
  await producer.connect();
  const messages = [];
  for (let i = 0; i < count; i++) messages.push({ key: String(i), value: `kjs-${i}` });
  for (let i = 0; i < messages.length; i += 100) {
    await producer.send({ topic, acks: -1, messages: messages.slice(i, i + 100) });
  }
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: 'kjs-group', sessionTimeout: 10000, heartbeatInterval: 500 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = new Set();
  let dups = 0;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout with ${seen.size}`)), 60000);
    consumer.run({
      eachMessage: async ({ message }) => {
        const v = message.value.toString();
        if (seen.has(v)) dups++;
        seen.add(v);
        if (seen.size === count) { clearTimeout(timer); resolve(); }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  if (dups !== 0) throw new Error(`${dups} duplicates`);
  console.log(`ok ${seen.size}`);
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
