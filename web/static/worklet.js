// AudioWorklet for the WebSocket fallback: the microphone's samples, mixed to mono, posted to the
// page in frames of `frameSize` float32 samples at the AudioContext's rate.
class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.size = Math.max(128, opts.frameSize || 2048);
    this.buf = new Float32Array(this.size);
    this.n = 0;
    this.port.onmessage = (e) => {
      if (e.data === "flush" && this.n > 0) {
        this.port.postMessage(this.buf.slice(0, this.n).buffer);
        this.n = 0;
      }
    };
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length) {
      const channels = input.length;
      const len = input[0].length;
      for (let i = 0; i < len; i++) {
        let v = 0;
        for (let c = 0; c < channels; c++) v += input[c][i];
        this.buf[this.n++] = v / channels;
        if (this.n === this.size) {
          this.port.postMessage(this.buf.buffer, [this.buf.buffer]);
          this.buf = new Float32Array(this.size);
          this.n = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
