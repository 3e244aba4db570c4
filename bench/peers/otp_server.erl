%% Peer server for the side-by-side benchmark: Erlang/OTP's ssh daemon (OTP 25, ssh 4.15).
%%
%% Started by otp_server.sh (which builds system_dir / user_dir and runs
%% `erl ... -s otp_server main -extra --listen 127.0.0.1:PORT --control PATH --system-dir D --user-dir D`).
%%
%% - ssh:daemon/3 with auth_methods "publickey": any user name whose key is in user_dir/authorized_keys.
%% - connectfun (runs in the connection process, whose pid is the ConnectionRef) registers the
%%   connection with one registry process, which monitors it and drops it on 'DOWN'.
%% - Exec: this module is also the ssh_server_channel callback given with {ssh_cli, {?MODULE, []}}.
%%   An exec request opens a port `/bin/sh -c CMD` (exit_status, binary, stderr_to_stdout), channel
%%   data goes to the port, port output to the channel, then exit-status, EOF and CLOSE.
%%   Limits of plain ports: stderr arrives merged into stdout, and the client's EOF cannot be passed
%%   on (a port's stdin cannot be half-closed), so `cat` never sees EOF.
%%   The exec command `@wait` opens no port: channel data is dropped, and the client's EOF is
%%   answered with exit-status 0, EOF and CLOSE (the benchmark's held sessions: no child, no pipes).
%% - Kill = ssh:close(ConnRef); the reply `ok` is sent when the registry has seen the connection
%%   process 'DOWN'. The port child (sh, sleep ...) is not killed: its pipes close with the port.
%% - Control socket: gen_tcp on {local, Path} (mode 0600), one line per request:
%%   count -> ok N | list -> ok ID... | kill ID -> ok / err unknown ID | killall -> ok N | else err.
-module(otp_server).
-behaviour(ssh_server_channel).

-export([main/0]).
%% ssh_server_channel callbacks
-export([init/1, handle_msg/2, handle_ssh_msg/2, terminate/2]).

-define(REGISTRY, otp_server_registry).
-define(WAIT, "@wait").  % the in-process exec command

%%% ------------------------------------------------------------------ startup

main() ->
    Opts = parse_args(init:get_plain_arguments(), #{}),
    {Ip, Port} = parse_listen(maps:get(listen, Opts)),
    {ok, _} = application:ensure_all_started(ssh),
    Registry = spawn(fun() -> registry(#{}, #{}, 1, []) end),
    register(?REGISTRY, Registry),
    DaemonOpts = [{system_dir, maps:get(system_dir, Opts)},
                  {user_dir, maps:get(user_dir, Opts)},
                  {auth_methods, "publickey"},
                  {ssh_cli, {?MODULE, []}},
                  {subsystems, []},
                  {connectfun, fun(_User, _Peer, _Method) -> ?REGISTRY ! {connected, self()} end}]
                 ++ [{parallel_login, true} || maps:get(parallel_login, Opts, false)],
    case ssh:daemon(Ip, Port, DaemonOpts) of
        {ok, _Daemon} -> ok;
        Error -> fail("ssh:daemon failed: ~p", [Error])
    end,
    Path = maps:get(control, Opts),
    _ = file:delete(Path),
    Self = self(),
    spawn(fun() ->
                  case gen_tcp:listen(0, [{ifaddr, {local, Path}}, binary, {packet, line},
                                          {active, false}, {backlog, 128}]) of
                      {ok, L} ->
                          ok = file:change_mode(Path, 8#600),
                          Self ! control_ready,
                          control_accept(L);
                      Err ->
                          Self ! {control_failed, Err}
                  end
          end),
    receive
        control_ready -> ok;
        {control_failed, Err} -> fail("control socket ~s: ~p", [Path, Err])
    end,
    {A, B, C, D} = Ip,
    io:format("listening on ~b.~b.~b.~b:~b~n", [A, B, C, D, Port]).

parse_args(["--listen", V | T], M) -> parse_args(T, M#{listen => V});
parse_args(["--control", V | T], M) -> parse_args(T, M#{control => V});
parse_args(["--system-dir", V | T], M) -> parse_args(T, M#{system_dir => V});
parse_args(["--user-dir", V | T], M) -> parse_args(T, M#{user_dir => V});
parse_args(["--parallel-login" | T], M) -> parse_args(T, M#{parallel_login => true});
parse_args([], M) ->
    [maps:is_key(K, M) orelse fail("missing --~s", [K]) || K <- [listen, control, system_dir, user_dir]],
    M;
parse_args(Other, _) -> fail("bad arguments: ~p", [Other]).

parse_listen(S) ->
    [Host, PortS] = string:split(S, ":", trailing),
    {ok, Ip} = inet:parse_ipv4_address(Host),
    {Ip, list_to_integer(PortS)}.

fail(Fmt, Args) ->
    io:format(standard_error, "otp_server: " ++ Fmt ++ "~n", Args),
    erlang:halt(1).

%%% ------------------------------------------------------------------ registry

%% Conns: Id (integer, increasing) => Pid; Ids: Pid => Id;
%% Waiters: [{From, Tag, PidsStillAlive, Reply}] answered when all those pids are 'DOWN'.
registry(Conns, Ids, Next, Waiters) ->
    receive
        {connected, Pid} ->
            erlang:monitor(process, Pid),
            registry(Conns#{Next => Pid}, Ids#{Pid => Next}, Next + 1, Waiters);
        {'DOWN', _, process, Pid, _} ->
            {Conns1, Ids1} = case maps:take(Pid, Ids) of
                                 {Id, I1} -> {maps:remove(Id, Conns), I1};
                                 error -> {Conns, Ids}
                             end,
            registry(Conns1, Ids1, Next, notify(Pid, Waiters));
        {req, From, Tag, count} ->
            From ! {Tag, io_lib:format("ok ~b", [map_size(Conns)])},
            registry(Conns, Ids, Next, Waiters);
        {req, From, Tag, list} ->
            From ! {Tag, ["ok" | [[" c", integer_to_list(Id)] || Id <- lists:sort(maps:keys(Conns))]]},
            registry(Conns, Ids, Next, Waiters);
        {req, From, Tag, {kill, IdStr}} ->
            case lookup(IdStr, Conns) of
                {ok, Pid} ->
                    close(Pid),
                    registry(Conns, Ids, Next, [{From, Tag, [Pid], "ok"} | Waiters]);
                error ->
                    From ! {Tag, ["err unknown ", IdStr]},
                    registry(Conns, Ids, Next, Waiters)
            end;
        {req, From, Tag, killall} ->
            Pids = maps:values(Conns),
            lists:foreach(fun close/1, Pids),
            Reply = io_lib:format("ok ~b", [length(Pids)]),
            case Pids of
                [] -> From ! {Tag, Reply}, registry(Conns, Ids, Next, Waiters);
                _ -> registry(Conns, Ids, Next, [{From, Tag, Pids, Reply} | Waiters])
            end
    end.

lookup("c" ++ Digits, Conns) ->
    case string:to_integer(Digits) of
        {N, ""} -> maps:find(N, Conns);
        _ -> error
    end;
lookup(_, _) -> error.

%% ssh:close/1 is a call into the connection process: do it outside the registry.
close(Pid) -> spawn(fun() -> catch ssh:close(Pid) end).

notify(Pid, Waiters) ->
    lists:filtermap(fun({From, Tag, Pids, Reply}) ->
                            case lists:delete(Pid, Pids) of
                                [] -> From ! {Tag, Reply}, false;
                                Left -> {true, {From, Tag, Left, Reply}}
                            end
                    end, Waiters).

%%% ------------------------------------------------------------------ control socket

control_accept(L) ->
    case gen_tcp:accept(L) of
        {ok, S} ->
            Pid = spawn(fun() -> receive go -> control_loop(S) end end),
            ok = gen_tcp:controlling_process(S, Pid),
            Pid ! go;
        {error, _} ->
            ok
    end,
    control_accept(L).

control_loop(S) ->
    case gen_tcp:recv(S, 0) of
        {ok, Line} ->
            Reply = case string:lexemes(binary_to_list(Line), " \t\r\n") of
                        ["count"] -> ask(count);
                        ["list"] -> ask(list);
                        ["kill", Id] -> ask({kill, Id});
                        ["killall"] -> ask(killall);
                        Words -> ["err bad request: ", lists:join(" ", Words)]
                    end,
            case gen_tcp:send(S, [Reply, $\n]) of
                ok -> control_loop(S);
                _ -> gen_tcp:close(S)
            end;
        {error, _} ->
            gen_tcp:close(S)
    end.

ask(Req) ->
    Tag = make_ref(),
    ?REGISTRY ! {req, self(), Tag, Req},
    receive {Tag, Reply} -> Reply end.

%%% ------------------------------------------------------------------ exec channel

%% port: undefined before exec, the port of `sh -c CMD`, or wait for ?WAIT.
init(_Args) ->
    {ok, #{port => undefined}}.

handle_msg({ssh_channel_up, _ChannelId, _Cm}, S) ->
    {ok, S};
handle_msg({Port, {data, Data}}, #{port := Port, cm := Cm, channel := Ch} = S) ->
    ok = ssh_connection:send(Cm, Ch, Data),
    {ok, S};
handle_msg({Port, {exit_status, Status}}, #{port := Port, cm := Cm, channel := Ch} = S) ->
    ssh_connection:exit_status(Cm, Ch, Status),
    ssh_connection:send_eof(Cm, Ch),
    {stop, Ch, S#{port := undefined}};
handle_msg(_Other, S) ->
    {ok, S}.

handle_ssh_msg({ssh_cm, Cm, {exec, Ch, WantReply, ?WAIT}}, #{port := undefined} = S) ->
    ssh_connection:reply_request(Cm, WantReply, success, Ch),
    {ok, S#{port := wait, cm => Cm, channel => Ch}};
handle_ssh_msg({ssh_cm, Cm, {eof, Ch}}, #{port := wait, channel := Ch} = S) ->
    ssh_connection:exit_status(Cm, Ch, 0),
    ssh_connection:send_eof(Cm, Ch),
    {stop, Ch, S#{port := undefined}};
handle_ssh_msg({ssh_cm, Cm, {exec, Ch, WantReply, Cmd}}, #{port := undefined} = S) ->
    Port = open_port({spawn_executable, "/bin/sh"},
                     [{args, ["-c", Cmd]}, exit_status, binary, stderr_to_stdout]),
    ssh_connection:reply_request(Cm, WantReply, success, Ch),
    {ok, S#{port := Port, cm => Cm, channel => Ch}};
handle_ssh_msg({ssh_cm, _Cm, {data, _Ch, 0, Data}}, #{port := Port} = S) when is_port(Port) ->
    catch port_command(Port, Data),
    {ok, S};
handle_ssh_msg({ssh_cm, Cm, {shell, Ch, WantReply}}, S) ->
    ssh_connection:reply_request(Cm, WantReply, failure, Ch),
    {stop, Ch, S};
handle_ssh_msg({ssh_cm, Cm, {pty, Ch, WantReply, _}}, S) ->
    ssh_connection:reply_request(Cm, WantReply, failure, Ch),
    {ok, S};
handle_ssh_msg({ssh_cm, Cm, {env, Ch, WantReply, _, _}}, S) ->
    ssh_connection:reply_request(Cm, WantReply, failure, Ch),
    {ok, S};
handle_ssh_msg(_Other, S) ->
    %% data for @wait (dropped; the window is adjusted by ssh_server_channel), eof for a port
    %% (cannot be passed on), signals, window changes...
    {ok, S}.

terminate(_Reason, _S) ->
    ok.
