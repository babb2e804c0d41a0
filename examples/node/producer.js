// A Node.js producer for voicepipe with celery-node: tasks by name, one client per queue,
// keyword arguments as in contract/tasks/<task>.schema.json. Results (a retry's outcome or
// its named refusal) are read from the Redis broker, which voicepipe's workers use as their
// result backend on Redis. Run: BROKER_URL=redis://host:6379/0 node producer.js
"use strict";
const crypto = require("crypto");
const celery = require("celery-node");

const broker = process.env.BROKER_URL;
if (!broker) {
  console.error("BROKER_URL is not set (redis://host:6379/0)");
  process.exit(2);
}
// One client per queue (worker/routes.py TASK_QUEUES): celery-node sends to its client's queue.
const pipeline = celery.createClient(broker, broker, "pipeline");
const events = celery.createClient(broker, broker, "events");
const retry = celery.createClient(broker, broker, "retry");

async function main() {
  const organization = process.env.VOICEPIPE_EXAMPLE_ORG || "org-node";
  const artifactId = crypto.randomUUID();
  const eventId = crypto.randomUUID(); // a repeated event_id is a no-op: safe to resend
  pipeline.createTask("voicepipe.directory.upsert_organization")
    .applyAsync([], { id: organization, name: "Node example club" });
  pipeline.createTask("voicepipe.pipeline.ingest").applyAsync([], {
    organization_id: organization, coach_id: "coach-node", source_channel: "whatsapp", artifact_id: artifactId,
  });
  events.createTask("voicepipe.events.record").applyAsync([], {
    event_id: eventId,
    event_type: "artifact_received",
    organization_id: organization,
    artifact_id: artifactId,
    occurred_at: new Date().toISOString(), // RFC 3339 with "Z"
    metadata: { sourceChannel: "whatsapp" },
  });
  // A retry answers with its outcome, or with a named refusal (PermissionDenied, ArtifactNotFound,
  // RetryNotAllowed, RetryLimitExceeded, InvalidInput) whose message says what was wrong.
  const asked = retry.createTask("voicepipe.retry.full_pipeline").applyAsync([], {
    artifact_id: artifactId, requested_by: process.env.VOICEPIPE_EXAMPLE_USER || "someone", reason: "from Node",
  });
  let answer;
  try {
    answer = { outcome: await asked.get(60000) };
  } catch (err) {
    answer = { refused: err.exc_type || err.message, message: String(err.exc_message || "") };
  }
  console.log(JSON.stringify({ artifact_id: artifactId, event_id: eventId, retry: answer }));
}

main()
  .catch((err) => { console.error(err); process.exitCode = 1; })
  .finally(() => Promise.all([pipeline.disconnect(), events.disconnect(), retry.disconnect()]));
