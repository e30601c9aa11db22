// Package frame is the wire format of the mvm guest agent protocol (docs/guest-agent-protocol.md).
//
// A frame is a 16-byte header followed by the payload:
//
//	0  2  magic "MV" (0x4d 0x56)
//	2  1  kind
//	3  1  flags (reserved, 0)
//	4  4  stream id, big endian
//	8  4  payload length, big endian, at most MaxPayload
//	12 4  CRC-32 (IEEE) of bytes 0..11 followed by the payload
//
// The decoder accepts a frame only when the magic, kind, flags, length and CRC all check out;
// anything else is skipped one byte at a time up to the next magic (resynchronisation), so a
// byte stream that outlives connections (virtio-serial) recovers from partial frames and
// garbage.
package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
)

// Kind is the frame type.
type Kind uint8

const (
	Hello    Kind = 1  // stream 0, JSON: opens (or resets) a session; host first, agent answers
	Request  Kind = 2  // JSON {op, ...}: opens a stream (host → agent)
	Response Kind = 3  // JSON: final result, closes the stream (agent → host)
	Error    Kind = 4  // JSON {code, message, ...}: final error, closes the stream
	Data     Kind = 5  // [channel u8] bytes
	EOF      Kind = 6  // [channel u8]: no more DATA on that channel
	Window   Kind = 7  // [channel u8][increment u32 BE]: the receiver grants the sender credit
	Control  Kind = 8  // JSON, in-stream: {signal}, {resize}, {cancel} (host → agent)
	Event    Kind = 9  // JSON, in-stream progress (agent → host)
	Ping     Kind = 10 // stream 0, opaque payload (host → agent)
	Pong     Kind = 11 // stream 0, the PING's payload echoed (agent → host)
)

const maxKind = Pong

func (k Kind) String() string {
	switch k {
	case Hello:
		return "HELLO"
	case Request:
		return "REQUEST"
	case Response:
		return "RESPONSE"
	case Error:
		return "ERROR"
	case Data:
		return "DATA"
	case EOF:
		return "EOF"
	case Window:
		return "WINDOW"
	case Control:
		return "CONTROL"
	case Event:
		return "EVENT"
	case Ping:
		return "PING"
	case Pong:
		return "PONG"
	}
	return "UNKNOWN"
}

// Channels of DATA, EOF and WINDOW.
const (
	ChanIn  = 0 // stdin, upload, host → guest TCP bytes
	ChanOut = 1 // stdout (and a tty's merged output), download, guest → host TCP bytes, listings
	ChanErr = 2 // stderr
)

const (
	HeaderSize = 16
	// MaxData is the largest DATA chunk; MaxPayload leaves room for the channel byte.
	MaxData    = 64 * 1024
	MaxPayload = MaxData + 64
	// SyncLen is the length of the resync preamble a host writes before HELLO on a byte stream
	// that outlives connections: enough zero bytes to complete any partial frame (which then
	// fails its CRC) and be skipped.
	SyncLen = HeaderSize + MaxPayload
)

// Frame is one decoded frame; Payload is owned by the frame.
type Frame struct {
	Kind    Kind
	Flags   uint8
	Stream  uint32
	Payload []byte
}

func putHeader(h []byte, kind Kind, stream uint32, n int) {
	h[0], h[1], h[2], h[3] = 'M', 'V', byte(kind), 0
	binary.BigEndian.PutUint32(h[4:8], stream)
	binary.BigEndian.PutUint32(h[8:12], uint32(n))
}

// Encode returns a complete frame whose payload is the concatenation of parts.
func Encode(kind Kind, stream uint32, parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > MaxPayload {
		panic("frame: payload too large")
	}
	b := make([]byte, HeaderSize+n)
	putHeader(b, kind, stream, n)
	off := HeaderSize
	for _, p := range parts {
		off += copy(b[off:], p)
	}
	crc := crc32.ChecksumIEEE(b[:12])
	crc = crc32.Update(crc, crc32.IEEETable, b[HeaderSize:])
	binary.BigEndian.PutUint32(b[12:16], crc)
	return b
}

// Stats counts what a Decoder skipped.
type Stats struct {
	Frames       uint64 // frames accepted
	SkippedBytes uint64 // bytes dropped while resynchronising
	BadCRC       uint64 // candidate frames rejected by their CRC
}

// Decoder reads frames from a byte stream, resynchronising on garbage.
type Decoder struct {
	r          io.Reader
	buf        []byte
	start, end int
	Stats      Stats
}

func NewDecoder(r io.Reader) *Decoder {
	return &Decoder{r: r, buf: make([]byte, 4*(HeaderSize+MaxPayload))}
}

// Reset drops buffered bytes (e.g. when the transport reports the host went away).
func (d *Decoder) Reset() { d.start, d.end = 0, 0 }

func validHeader(h []byte) bool {
	k := Kind(h[2])
	return k >= Hello && k <= maxKind && h[3] == 0 && binary.BigEndian.Uint32(h[8:12]) <= MaxPayload
}

func (d *Decoder) skip(n int) {
	d.start += n
	d.Stats.SkippedBytes += uint64(n)
}

// Next returns the next valid frame. Errors are the reader's (io.EOF at the end of the stream).
func (d *Decoder) Next() (Frame, error) {
	for {
		if f, ok := d.parse(); ok {
			return f, nil
		}
		if d.start > 0 && (d.start == d.end || len(d.buf)-d.end < HeaderSize+MaxPayload) {
			d.end = copy(d.buf, d.buf[d.start:d.end])
			d.start = 0
		}
		n, err := d.r.Read(d.buf[d.end:])
		d.end += n
		if n == 0 && err != nil {
			return Frame{}, err
		}
	}
}

// parse tries to take one frame from the buffer, skipping garbage before it.
func (d *Decoder) parse() (Frame, bool) {
	for {
		b := d.buf[d.start:d.end]
		if len(b) == 0 {
			return Frame{}, false
		}
		if b[0] != 'M' {
			i := bytes.IndexByte(b, 'M')
			if i < 0 {
				d.skip(len(b))
				return Frame{}, false
			}
			d.skip(i)
			continue
		}
		if len(b) < 2 {
			return Frame{}, false
		}
		if b[1] != 'V' {
			d.skip(1)
			continue
		}
		if len(b) < HeaderSize {
			return Frame{}, false
		}
		if !validHeader(b) {
			d.skip(1)
			continue
		}
		n := int(binary.BigEndian.Uint32(b[8:12]))
		if len(b) < HeaderSize+n {
			return Frame{}, false
		}
		crc := crc32.ChecksumIEEE(b[:12])
		crc = crc32.Update(crc, crc32.IEEETable, b[HeaderSize:HeaderSize+n])
		if crc != binary.BigEndian.Uint32(b[12:16]) {
			d.Stats.BadCRC++
			d.skip(1)
			continue
		}
		f := Frame{Kind: Kind(b[2]), Flags: b[3], Stream: binary.BigEndian.Uint32(b[4:8])}
		f.Payload = append([]byte(nil), b[HeaderSize:HeaderSize+n]...)
		d.start += HeaderSize + n
		d.Stats.Frames++
		return f, true
	}
}

// ErrShort is returned by the payload helpers for a payload too short for its kind.
var ErrShort = errors.New("frame: payload too short")

// DataPayload splits a DATA payload into channel and bytes.
func DataPayload(p []byte) (byte, []byte, error) {
	if len(p) < 1 {
		return 0, nil, ErrShort
	}
	return p[0], p[1:], nil
}

// WindowPayload splits a WINDOW payload into channel and credit increment.
func WindowPayload(p []byte) (byte, uint32, error) {
	if len(p) < 5 {
		return 0, 0, ErrShort
	}
	return p[0], binary.BigEndian.Uint32(p[1:5]), nil
}

// WindowBytes is the payload of a WINDOW frame.
func WindowBytes(ch byte, inc uint32) []byte {
	b := []byte{ch, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], inc)
	return b
}
