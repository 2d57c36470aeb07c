// Connect-ES against Asyncgate, with no code generation: the services are
// read at run time from the gateway's descriptor set (a FileDescriptorSet of
// proto/, e.g. `buf build proto -o asyncgate.binpb`). An application would
// rather generate typed code with protoc-gen-es; the calls are the same.
//
//   node client.mjs http://127.0.0.1:50051 asyncgate.binpb [queue]
//
// For each transport (Connect JSON, Connect binary, gRPC-Web) it submits
// "hello <transport>" to the queue, follows the ticket's WatchTicket stream
// to its end and prints one line per event, the result, and how a bad
// request is answered. With --keys, set ASYNCGATE_API_KEY.
import { readFileSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

const [baseUrl, descriptors, queue = "upper"] = process.argv.slice(2);
if (!baseUrl || !descriptors) {
  console.error("usage: node client.mjs BASE_URL DESCRIPTOR_SET [QUEUE]");
  process.exit(2);
}
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptors)));
const Gateway = registry.getService("asyncgate.v1.Gateway");
const key = process.env.ASYNCGATE_API_KEY;
const interceptors = key
  ? [(next) => (request) => { request.header.set("authorization", `Bearer ${key}`); return next(request); }]
  : [];

const transports = {
  "connect-json": createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors }),
  "connect-binary": createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true, interceptors }),
  "grpc-web": createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors }),
};

for (const [name, transport] of Object.entries(transports)) {
  const gateway = createClient(Gateway, transport);
  // Payload.json is a google.protobuf.Value.
  const text = { kind: { case: "stringValue", value: `hello ${name}` } };
  const ticket = await gateway.submit({ queue, payload: { kind: { case: "json", value: text } } });
  console.log(`${name} submitted ${ticket.id}`);
  for await (const event of gateway.watchTicket({ id: ticket.id })) {
    const t = event.ticket;
    const progress = t?.progress ? ` ${t.progress.percent}%` : "";
    console.log(`${name} event ${event.seq} ${event.kind} state ${t?.state}${progress}`);
    if (t?.result?.kind.case === "json") {
      console.log(`${name} result ${JSON.stringify(t.result.kind.value.kind.value)}`);
    }
  }
  try {
    await gateway.getTicket({ id: "not-an-id" });
  } catch (error) {
    console.log(`${name} refused code ${error.code}: ${error.rawMessage}`);
  }
}
