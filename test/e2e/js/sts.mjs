// The JavaScript SDK v3 client that podiam's end-to-end test runs inside a
// pod network namespace. With no credentials in its environment, the SDK's
// default Node.js provider chain must end at the instance metadata provider
// (169.254.169.254, intercepted by the agent). "imds" as the first argument
// uses fromInstanceMetadata() directly instead. It prints the caller's ARN
// from STS GetCallerIdentity.
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { fromInstanceMetadata } from "@aws-sdk/credential-providers";

const mode = process.argv[2] ?? "chain";
const options = {};
if (mode === "imds") {
  // The SDK's own defaults: 1 s per request, no retry.
  options.credentials = fromInstanceMetadata({ timeout: 1000, maxRetries: 0 });
} else if (mode !== "chain") {
  console.error(`usage: sts.mjs [chain|imds], got ${mode}`);
  process.exit(2);
}

try {
  const client = new STSClient(options);
  const creds = await client.config.credentials();
  console.error(`access key id: ${creds.accessKeyId}, expires: ${creds.expiration?.toISOString()}`);
  const out = await client.send(new GetCallerIdentityCommand({}));
  console.log(out.Arn);
} catch (err) {
  console.error(`sts.mjs: ${err.name}: ${err.message}`);
  process.exit(1);
}
