// grpc-go-anchor: the grpc-go anchor for `scripts/bench query`. Serves UserQuery.GetUser with one
// fixed UserWithGroups (the same user and group as Benchmarks/GRPCUnaryC/server.c; the request is
// not looked at) and the standard health service, cleartext, on 127.0.0.1:PORT.
//
// It builds from Debian's packages only (golang-go, golang-google-grpc-dev, golang-goprotobuf-dev,
// protobuf-compiler), in GOPATH mode; the Go code for proto/ is generated into the GOPATH first
// (not committed). `scripts/bench query` does this:
//
//	M=Mentitysync/v1/entities.proto=entitysync/v1,Mentitysync/v1/services.proto=entitysync/v1
//	M=$M,Mgoogle/protobuf/timestamp.proto=github.com/golang/protobuf/ptypes/timestamp
//	protoc -Iproto -I/usr/include --go_out=plugins=grpc,$M:$GOPATH/src \
//	    entitysync/v1/entities.proto entitysync/v1/services.proto
//	GO111MODULE=off GOPATH=$GOPATH:/usr/share/gocode go build -o grpc-go-anchor Benchmarks/grpc-go/main.go
//
// usage: grpc-go-anchor PORT
package main

import (
	"context"
	"fmt"
	"net"
	"os"

	pb "entitysync/v1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

type userQuery struct {
	pb.UnimplementedUserQueryServer
	reply *pb.UserWithGroups
}

func (s *userQuery) GetUser(ctx context.Context, request *pb.GetRequest) (*pb.UserWithGroups, error) {
	return s.reply, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: grpc-go-anchor PORT")
		os.Exit(2)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	reply := &pb.UserWithGroups{
		User: &pb.User{Id: "u1", Name: "User 1", Email: "u1@example.com",
			Status: pb.UserStatus_USER_STATUS_ACTIVE, Version: 1},
		Groups: []*pb.Group{{Id: "g1", Name: "Group 1", MemberIds: []string{"u1"}, Version: 1}},
	}
	server := grpc.NewServer()
	pb.RegisterUserQueryServer(server, &userQuery{reply: reply})
	healthServer := health.NewServer() // the empty service name reports SERVING
	healthpb.RegisterHealthServer(server, healthServer)
	if err := server.Serve(listener); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
