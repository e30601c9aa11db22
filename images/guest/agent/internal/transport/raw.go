package transport

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"

	"mvm/guest-agent/internal/agent"
)

// RawHandler is a benchmark baseline over the same transport as the protocol, with no
// protocol at all (mvm-agent --raw MODE):
//
//	echo         every byte is written back (round-trip baseline)
//	sink:PATH    repeatedly: u64 BE length N, then N bytes, written to PATH (truncated); answers "OK\n"
//	source:PATH  repeatedly: u64 BE length N; answers with the first N bytes of PATH
func RawHandler(mode string) (Handler, error) {
	kind, path, _ := strings.Cut(mode, ":")
	switch {
	case kind == "echo" && path == "":
		return func(_ string, r io.Reader, w io.Writer, _ func(*agent.Conn)) error {
			buf := make([]byte, 64*1024)
			_, err := io.CopyBuffer(w, r, buf)
			return err
		}, nil
	case kind == "sink" && path != "":
		return func(_ string, r io.Reader, w io.Writer, _ func(*agent.Conn)) error {
			buf := make([]byte, 256*1024)
			for {
				var hdr [8]byte
				if _, err := io.ReadFull(r, hdr[:]); err != nil {
					return eofNil(err)
				}
				n := int64(binary.BigEndian.Uint64(hdr[:]))
				f, err := os.Create(path)
				if err != nil {
					return err
				}
				_, err = io.CopyBuffer(f, io.LimitReader(r, n), buf)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
				if _, err := w.Write([]byte("OK\n")); err != nil {
					return err
				}
			}
		}, nil
	case kind == "source" && path != "":
		return func(_ string, r io.Reader, w io.Writer, _ func(*agent.Conn)) error {
			buf := make([]byte, 256*1024)
			for {
				var hdr [8]byte
				if _, err := io.ReadFull(r, hdr[:]); err != nil {
					return eofNil(err)
				}
				n := int64(binary.BigEndian.Uint64(hdr[:]))
				f, err := os.Open(path)
				if err != nil {
					return err
				}
				k, err := io.CopyBuffer(w, io.LimitReader(f, n), buf)
				f.Close()
				if err != nil {
					return err
				}
				if k != n {
					return fmt.Errorf("source %s has only %d of the %d bytes asked", path, k, n)
				}
			}
		}, nil
	}
	return nil, fmt.Errorf("bad --raw mode %q (echo, sink:PATH or source:PATH)", mode)
}

func eofNil(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return nil
	}
	return err
}
