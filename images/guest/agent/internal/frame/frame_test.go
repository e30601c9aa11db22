package frame

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"io"
	"math/rand"
	"testing"
)

// oneByteReader returns at most one byte per Read, as a slow serial line might.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func decodeAll(t *testing.T, r io.Reader) ([]Frame, *Decoder) {
	t.Helper()
	d := NewDecoder(r)
	var out []Frame
	for {
		f, err := d.Next()
		if err == io.EOF {
			return out, d
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f)
	}
}

func TestKnownEncoding(t *testing.T) {
	// The same bytes are asserted by the TypeScript codec's unit test (test/unit/guest-codec.test.ts).
	got := hex.EncodeToString(Encode(Hello, 0, []byte(`{}`)))
	want := "4d5601000000000000000002" + "f4c9237c" + "7b7d"
	if got != want {
		t.Fatalf("HELLO {} = %s, want %s", got, want)
	}
}

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	big := bytes.Repeat([]byte{0xab}, MaxData)
	frames := []Frame{
		{Kind: Hello, Stream: 0, Payload: []byte(`{"protocol":1}`)},
		{Kind: Request, Stream: 1, Payload: []byte(`{"op":"health"}`)},
		{Kind: Data, Stream: 7, Payload: append([]byte{ChanOut}, big...)},
		{Kind: EOF, Stream: 7, Payload: []byte{ChanOut}},
		{Kind: Window, Stream: 7, Payload: WindowBytes(ChanIn, 1<<20)},
		{Kind: Ping, Stream: 0, Payload: nil},
		{Kind: Response, Stream: 0xffffffff, Payload: []byte(`{}`)},
	}
	for _, f := range frames {
		buf.Write(Encode(f.Kind, f.Stream, f.Payload))
	}
	got, d := decodeAll(t, oneByteReader{bytes.NewReader(buf.Bytes())})
	if len(got) != len(frames) {
		t.Fatalf("decoded %d frames, want %d", len(got), len(frames))
	}
	for i := range frames {
		if got[i].Kind != frames[i].Kind || got[i].Stream != frames[i].Stream || !bytes.Equal(got[i].Payload, frames[i].Payload) {
			t.Fatalf("frame %d: got %v/%d/%d bytes, want %v/%d/%d bytes", i, got[i].Kind, got[i].Stream, len(got[i].Payload), frames[i].Kind, frames[i].Stream, len(frames[i].Payload))
		}
	}
	if d.Stats.SkippedBytes != 0 || d.Stats.BadCRC != 0 {
		t.Fatalf("clean stream skipped %+v", d.Stats)
	}
	ch, inc, err := WindowPayload(got[4].Payload)
	if err != nil || ch != ChanIn || inc != 1<<20 {
		t.Fatalf("window payload: %d %d %v", ch, inc, err)
	}
}

func TestResyncAfterGarbage(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	garbage := make([]byte, 100000)
	rng.Read(garbage)
	var buf bytes.Buffer
	buf.WriteString("MVM-READY id=x\r\nMMMVVV") // text that starts with the magic
	buf.Write(garbage)
	buf.Write([]byte("MV\x02\x00")) // a header cut short
	want := Encode(Request, 3, []byte(`{"op":"health"}`))
	buf.Write(want)
	got, d := decodeAll(t, bytes.NewReader(buf.Bytes()))
	if len(got) != 1 || got[0].Stream != 3 || string(got[0].Payload) != `{"op":"health"}` {
		t.Fatalf("got %d frames: %+v", len(got), got)
	}
	if d.Stats.SkippedBytes != uint64(buf.Len()-len(want)) {
		t.Fatalf("skipped %d bytes, want %d", d.Stats.SkippedBytes, buf.Len()-len(want))
	}
}

func TestBadCRCIsSkipped(t *testing.T) {
	f := Encode(Data, 1, []byte{ChanIn}, []byte("hello"))
	f[len(f)-1] ^= 1 // flip a payload bit
	var buf bytes.Buffer
	buf.Write(f)
	buf.Write(Encode(Data, 2, []byte{ChanIn}, []byte("world")))
	got, d := decodeAll(t, bytes.NewReader(buf.Bytes()))
	if len(got) != 1 || got[0].Stream != 2 {
		t.Fatalf("got %+v", got)
	}
	if d.Stats.BadCRC != 1 {
		t.Fatalf("BadCRC = %d", d.Stats.BadCRC)
	}
}

func TestInvalidHeaderIsSkipped(t *testing.T) {
	for name, mut := range map[string]func([]byte){
		"kind 0":        func(h []byte) { h[2] = 0 },
		"kind 200":      func(h []byte) { h[2] = 200 },
		"flags":         func(h []byte) { h[3] = 1 },
		"length > max":  func(h []byte) { binary.BigEndian.PutUint32(h[8:12], MaxPayload+1) },
		"length 4 GiB ": func(h []byte) { binary.BigEndian.PutUint32(h[8:12], 0xffffffff) },
	} {
		t.Run(name, func(t *testing.T) {
			bad := Encode(Ping, 0, []byte("x"))
			mut(bad)
			var buf bytes.Buffer
			buf.Write(bad)
			buf.Write(Encode(Pong, 0, []byte("y")))
			got, _ := decodeAll(t, bytes.NewReader(buf.Bytes()))
			if len(got) != 1 || got[0].Kind != Pong {
				t.Fatalf("got %+v", got)
			}
		})
	}
}

// A host that dies in the middle of a frame leaves it partial on the serial line; the next host
// writes SyncLen zero bytes and HELLO. The partial frame is completed by zeros, fails its CRC, and
// the decoder resynchronises on the HELLO — nothing of the partial frame is delivered.
func TestPartialFrameThenSyncBurst(t *testing.T) {
	for _, cut := range []int{1, 2, 5, HeaderSize, HeaderSize + 1, HeaderSize + 1000, HeaderSize + MaxData} {
		partial := Encode(Data, 9, []byte{ChanIn}, bytes.Repeat([]byte{0x4d}, MaxData))[:cut]
		var buf bytes.Buffer
		buf.Write(Encode(Data, 9, []byte{ChanIn}, []byte("ok")))
		buf.Write(partial)
		buf.Write(make([]byte, SyncLen))
		buf.Write(Encode(Hello, 0, []byte(`{"protocol":1}`)))
		got, _ := decodeAll(t, bytes.NewReader(buf.Bytes()))
		if len(got) != 2 || got[0].Kind != Data || string(got[0].Payload) != "\x00ok" || got[1].Kind != Hello {
			t.Fatalf("cut %d: got %d frames", cut, len(got))
		}
	}
}

func TestEncodeRejectsOversizedPayload(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	Encode(Data, 1, make([]byte, MaxPayload+1))
}

func BenchmarkDecode64K(b *testing.B) {
	f := Encode(Data, 1, []byte{ChanOut}, make([]byte, MaxData))
	var buf bytes.Buffer
	for i := 0; i < 64; i++ {
		buf.Write(f)
	}
	data := buf.Bytes()
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		d := NewDecoder(bytes.NewReader(data))
		for {
			if _, err := d.Next(); err != nil {
				break
			}
		}
	}
}
