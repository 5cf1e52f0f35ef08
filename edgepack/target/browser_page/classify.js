// Classify images with an edgepack-exported .onnx file in the browser (onnxruntime-web, WASM backend).
//
// Everything the model needs is read from the file itself: its edgepack metadata (ONNX metadata_props
// key "edgepack": class names, input shape, dtype, pixel scaling, int8 scale and zero point), so any
// edgepack .onnx file dropped in place of the model works. The pixel scaling is the runtime's
// (edgepack.runtime.preprocess): input = float32((pixels / divisor + offset - mean) / std), computed
// in float64 like numpy, then rounded to float32.
import * as ort from './ort.wasm.min.mjs';

const METADATA_KEY = 'edgepack';

// --- ONNX metadata_props without a protobuf library: ModelProto field 14 is repeated
// StringStringEntryProto {key = 1, value = 2}; every top-level field is a varint or length-delimited.
function varint(buf, pos) {
  let value = 0, scale = 1, byte;
  do {
    byte = buf[pos++];
    value += (byte & 0x7f) * scale;  // arithmetic, not <<: lengths may exceed 2^31
    scale *= 128;
  } while (byte & 0x80);
  return [value, pos];
}

function fields(buf, start, end, visit) {
  let pos = start;
  while (pos < end) {
    let key, n;
    [key, pos] = varint(buf, pos);
    const wire = key % 8, field = Math.floor(key / 8);
    if (wire === 0) { [, pos] = varint(buf, pos); continue; }
    if (wire === 1) { pos += 8; continue; }
    if (wire === 5) { pos += 4; continue; }
    if (wire !== 2) throw new Error(`not an ONNX file (protobuf wire type ${wire})`);
    [n, pos] = varint(buf, pos);
    visit(field, pos, pos + n);
    pos += n;
  }
}

export function readMetadata(bytes) {
  const decoder = new TextDecoder();
  const props = {};
  fields(bytes, 0, bytes.length, (field, start, end) => {
    if (field !== 14) return;
    const entry = {};
    fields(bytes, start, end, (f, s, e) => { entry[f] = decoder.decode(bytes.subarray(s, e)); });
    props[entry[1]] = entry[2];
  });
  if (!(METADATA_KEY in props)) {
    throw new Error(`the model has no edgepack metadata (metadata_props "${METADATA_KEY}"): export it with edgepack export`);
  }
  return JSON.parse(props[METADATA_KEY]);
}

// --- pixels -> the file's input tensor, as edgepack.runtime does it
function roundHalfEven(v) {  // numpy's np.round
  const r = Math.round(v);
  return (Math.abs(v % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

export function prepare(meta, pixels, count) {
  const [h, w, c] = meta.input_shape;
  const s = meta.pixel_scaling;
  const size = h * w * c;
  if (pixels.length !== count * size) throw new Error(`expected ${count} x ${h}x${w}x${c} pixels, got ${pixels.length} values`);
  const bgr = meta.channel_order === 'BGR';  // pixels arrive RGB
  const out = new Float32Array(count * size);
  for (let i = 0; i < pixels.length; i++) {
    const ch = i % c;
    const src = bgr ? i - ch + (c - 1 - ch) : i;
    let x = pixels[src] / s.divisor;
    if (s.offset) x += s.offset;
    if (s.mean != null) x = (x - s.mean[s.mean.length === 1 ? 0 : ch]) / s.std[s.std.length === 1 ? 0 : ch];
    out[i] = x;  // float64 -> float32, as numpy's astype(float32)
  }
  const dims = [count, h, w, c];
  const q = meta.input_quantization;
  if (!q) return new ort.Tensor('float32', out, dims);
  const [lo, hi, Typed] = meta.input_dtype === 'int8' ? [-128, 127, Int8Array] : [0, 255, Uint8Array];
  const scale = Math.fround(q.scale);
  const ints = new Typed(out.length);
  for (let i = 0; i < out.length; i++) {
    ints[i] = Math.min(hi, Math.max(lo, roundHalfEven(Math.fround(out[i] / scale)) + q.zero_point));
  }
  return new ort.Tensor(meta.input_dtype, ints, dims);
}

function probabilities(meta, tensor) {
  const q = meta.output_quantization;
  if (!q) return Float32Array.from(tensor.data);
  const scale = Math.fround(q.scale), zero = q.zero_point;
  return Float32Array.from(tensor.data, (v) => Math.fround(Math.fround(v - zero) * scale));
}

// --- the model
export async function loadModel(url, threads) {
  const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
  const meta = readMetadata(bytes);
  ort.env.wasm.numThreads = threads;  // before the first session: the WASM module starts once
  ort.env.wasm.wasmPaths = new URL('./', import.meta.url).href;  // the .wasm beside this script
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: ['wasm'], graphOptimizationLevel: 'all',
  });
  return { meta, session, threads, version: ort.env.versions.web };
}

// Probabilities (count x classes, row-major Float32Array) of `count` RGB uint8 images, HWC each.
export async function predict(model, pixels, count) {
  const input = prepare(model.meta, pixels, count);
  const result = await model.session.run({ [model.session.inputNames[0]]: input });
  return probabilities(model.meta, result[model.session.outputNames[0]]);
}

// Milliseconds of each of `runs` batch-1 calls (input prepared once: the engine alone), after `warmup`.
export async function time(model, pixels, runs, warmup) {
  const feeds = { [model.session.inputNames[0]]: prepare(model.meta, pixels, 1) };
  for (let i = 0; i < warmup; i++) await model.session.run(feeds);
  const ms = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await model.session.run(feeds);
    ms.push(performance.now() - t0);
  }
  return ms;
}

// An image file -> the model's input size: centre square crop, then the canvas' smooth resize (the
// runtime uses Pillow's antialiased bilinear: other sizes may differ slightly; same size is exact).
export async function pixelsOf(file, meta) {
  const [h, w] = meta.input_shape;
  const img = await createImageBitmap(file);
  const side = Math.min(img.width, img.height);
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(img, (img.width - side) / 2, (img.height - side) / 2, side, side, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const c = meta.input_shape[2];
  const out = new Uint8Array(h * w * c);
  for (let p = 0; p < h * w; p++) {
    if (c === 1) out[p] = Math.round(0.299 * rgba[4 * p] + 0.587 * rgba[4 * p + 1] + 0.114 * rgba[4 * p + 2]);
    else for (let k = 0; k < 3; k++) out[3 * p + k] = rgba[4 * p + k];
  }
  return out;
}
