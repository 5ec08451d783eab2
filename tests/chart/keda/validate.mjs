// Reads a JSON array of KEDA objects on stdin and validates each against KEDA's models.
// Prints one line per problem; exits 1 if any object is invalid.
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";

const kinds = { ScaledObject, TriggerAuthentication };
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
let failed = 0;
for (const doc of JSON.parse(Buffer.concat(chunks).toString())) {
  const Model = kinds[doc.kind];
  if (!Model) { console.log(`${doc.kind} ${doc.metadata?.name}: no KEDA model`); failed++; continue; }
  try { new Model(doc).validate(); console.log(`${doc.kind} ${doc.metadata.name}: valid`); }
  catch (e) { console.log(`${doc.kind} ${doc.metadata?.name}: ${e.message}`); failed++; }
}
process.exit(failed ? 1 : 0);
