// The tutorial's user-name provider (import paths updated; a failed connect exits instead of
// carrying on with a nil connection).
package main

import (
	"fmt"
	"os"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	transport "shoalinterop/transport"
)

var users map[string]string
var nc *nats.Conn

func main() {
	if len(os.Args) != 2 {
		fmt.Println("Wrong number of arguments. Need NATS server address.")
		return
	}
	var err error

	nc, err = nats.Connect(os.Args[1])
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}

	users = make(map[string]string)
	users["1"] = "Bob"
	users["2"] = "John"
	users["3"] = "Dan"
	users["4"] = "Kate"

	nc.QueueSubscribe("UserNameById", "userNameByIdProviders", replyWithUserId)
	nc.Flush()
	fmt.Println("ready")
	select {}
}

func replyWithUserId(m *nats.Msg) {
	myUser := transport.User{}
	err := proto.Unmarshal(m.Data, &myUser)
	if err != nil {
		fmt.Println(err)
		return
	}
	myUser.Name = users[myUser.Id]
	data, err := proto.Marshal(&myUser)
	if err != nil {
		fmt.Println(err)
		return
	}
	nc.Publish(m.Reply, data)
}
