/**
 * A small ANSI interpreter for the console view: SGR colours and bold become
 * styled segments; other escape sequences (cursor movement, OSC titles) and
 * carriage returns are dropped. Stateful across chunks (a sequence may be split).
 */
export interface Segment {
  text: string;
  fg?: string;
  bg?: string;
  bold?: boolean;
}

const COLORS = ['black', 'red', 'green', 'yellow', 'blue', 'magenta', 'cyan', 'white'];

export class AnsiParser {
  private fg: string | undefined;
  private bg: string | undefined;
  private bold = false;
  private pending = '';

  push(chunk: string): Segment[] {
    const s = this.pending + chunk;
    this.pending = '';
    const out: Segment[] = [];
    let text = '';
    const flush = (): void => {
      if (!text) return;
      const seg: Segment = { text };
      if (this.fg) seg.fg = this.fg;
      if (this.bg) seg.bg = this.bg;
      if (this.bold) seg.bold = true;
      out.push(seg);
      text = '';
    };
    for (let i = 0; i < s.length; i++) {
      const c = s[i]!;
      if (c === '\x1b') {
        const rest = s.slice(i);
        const csi = /^\x1b\[([0-9;?]*)([@-~])/.exec(rest);
        const osc = /^\x1b\][^\x07\x1b]*(\x07|\x1b\\)/.exec(rest);
        if (csi) {
          if (csi[2] === 'm') {
            flush();
            this.sgr(csi[1]!);
          }
          i += csi[0].length - 1;
          continue;
        }
        if (osc) {
          i += osc[0].length - 1;
          continue;
        }
        if (/^\x1b(\[[0-9;?]*|\][^\x07]*)?$/.test(rest) && rest.length < 64) {
          this.pending = rest; // incomplete sequence: wait for the next chunk
          break;
        }
        if (rest.length >= 2) i += 1; // two-character escape (e.g. ESC c)
        continue;
      }
      if (c === '\r' || c === '\x07' || c === '\x00') continue;
      if (c === '\b') {
        text = text.slice(0, -1);
        continue;
      }
      text += c;
    }
    flush();
    return out;
  }

  private sgr(params: string): void {
    const codes = params === '' ? [0] : params.split(';').map((x) => Number(x) || 0);
    for (let k = 0; k < codes.length; k++) {
      const n = codes[k]!;
      if (n === 0) {
        this.fg = undefined;
        this.bg = undefined;
        this.bold = false;
      } else if (n === 1) this.bold = true;
      else if (n === 22) this.bold = false;
      else if (n >= 30 && n <= 37) this.fg = COLORS[n - 30];
      else if (n >= 90 && n <= 97) this.fg = `bright-${COLORS[n - 90]}`;
      else if (n === 39) this.fg = undefined;
      else if (n >= 40 && n <= 47) this.bg = COLORS[n - 40];
      else if (n === 49) this.bg = undefined;
      else if ((n === 38 || n === 48) && codes[k + 1] === 5) k += 2; // 256 colours: ignored
      else if ((n === 38 || n === 48) && codes[k + 1] === 2) k += 4; // true colour: ignored
    }
  }
}
