package tns_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tnsguard/tnsguard/tns"
)

func TestBuildConnectInlineLimit(t *testing.T) {
	for _, n := range []int{0, 1, 230, 231, 4000, 65525} {
		data := "(A=" + strings.Repeat("x", max(n-4, 0)) + ")"
		if n == 0 {
			data = ""
		}
		b, err := tns.BuildConnect(data)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		info, err := tns.ParseConnectData(b)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if info.ConnectData != data || info.DataFollows != (len(data) > 230) || info.Len != len(b) {
			t.Errorf("%d bytes: follows %v len %d of %d", len(data), info.DataFollows, info.Len, len(b))
		}
	}
	if _, err := tns.BuildConnect(strings.Repeat("x", 65526)); !errors.Is(err, tns.ErrTooLarge) {
		t.Errorf("65526 bytes: %v, want ErrTooLarge", err)
	}
}

func TestBuildAnswersParseBack(t *testing.T) {
	for _, v := range []uint16{300, 308, 314, 315, 318, 319} {
		a, err := tns.ParseAccept(tns.BuildAccept(v, "(DESCRIPTION=(TMP=))"))
		if err != nil || a.Version != v || a.SDU != 2048 || a.TDU != 32767 {
			t.Errorf("BuildAccept(%d) parses to %+v, %v", v, a, err)
		}
	}
	r, err := tns.ParseRefuse(tns.BuildRefuse(0x22, 0x01, "(DESCRIPTION=(ERR=12528))"))
	if code, _ := r.Err(); err != nil || code != 12528 || r.UserReason != 0x22 || r.SystemReason != 0x01 {
		t.Errorf("BuildRefuse parses to %+v, %v", r, err)
	}
}
