// The unmodified Node `openai` package talking to pointsman's proxy: chat completions and the
// Responses API, plain and streamed. Run by tests/it/clients.rs; prints one JSON object.
//
//     node client.mjs BASE_URL API_KEY
import OpenAI from "openai";

const [base, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0, timeout: 20000 });
const seen = {};
const order = [{ role: "user", content: "Where is my order #12345?" }];

const { data: completion, response } = await client.chat.completions
  .create({ model: "auto", messages: order })
  .withResponse();
seen.chat = {
  text: completion.choices[0].message.content,
  model_header: response.headers.get("x-pointsman-model"),
};

let pieces = [];
for await (const chunk of await client.chat.completions.create({ model: "auto", messages: order, stream: true })) {
  pieces.push(chunk.choices[0]?.delta?.content ?? "");
}
seen.chat_stream = pieces.join("");

const { data: answer, response: raw } = await client.responses
  .create({ model: "auto", input: "Where is my order #12345?" })
  .withResponse();
seen.responses = { text: answer.output_text, model_header: raw.headers.get("x-pointsman-model") };

pieces = [];
let last = null;
for await (const event of await client.responses.create({ model: "auto", input: "Where is my order #12345?", stream: true })) {
  if (event.type === "response.output_text.delta") pieces.push(event.delta);
  last = event.type;
}
seen.responses_stream = { text: pieces.join(""), last };

const stream = client.responses.stream({ model: "auto", input: "Where is my order #12345?" });
for await (const _ of stream) {
  // read to the end
}
seen.responses_stream_helper = (await stream.finalResponse()).output_text;

console.log(JSON.stringify(seen));
